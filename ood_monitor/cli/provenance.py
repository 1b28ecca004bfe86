"""Where a model's training frames came from, and a one-time note when it is used on other footage.

The shipped models were trained on the rendered demo world; on a real camera their scores measure how
unlike the demo world the footage is, not whether the camera sees something unusual. A user trying them
on their own bags should hear that from the command, not find it out from the numbers."""
from __future__ import annotations

import json
from pathlib import Path

# the generator as written now, and before it moved (datasets made earlier)
DEMO_GENERATORS = ("ood_monitor.demo_world.generator", "ood_monitor." + "data.demo")
DEMO_WORLD = "demo world"
_noted: set[tuple[str, bool]] = set()


def data_origin(path: str | Path) -> str:
    """"demo world" for data under a dataset.json written by `ood-monitor data demo`, else the path."""
    path = Path(path).resolve()
    for folder in (path, *path.parents[:3]):
        meta = folder / "dataset.json"
        if meta.is_file():
            try:
                if json.loads(meta.read_text()).get("generator") in DEMO_GENERATORS:
                    return DEMO_WORLD
            except (OSError, ValueError, AttributeError):
                return str(path)
    return str(path)


def note_if_foreign(model_dir: str | Path, card_data: dict, data: str | Path) -> str | None:
    """A note (printed once per model and origin) when a model trained on the demo world meets other
    footage, or one trained on own footage meets the demo world; None when the origins agree or the
    model does not record its origin."""
    trained = card_data.get("origin")
    here = data_origin(data)
    if trained is None or (trained == DEMO_WORLD) == (here == DEMO_WORLD):
        return None
    key = (str(model_dir), here == DEMO_WORLD)
    if key in _noted:
        return None
    _noted.add(key)
    if trained == DEMO_WORLD:
        note = (f"note: {model_dir} was trained on the rendered demo world (ood-monitor data demo), not on {data}: "
                f"its scores there measure how unlike the demo world this footage is, not whether the camera sees "
                f"something unusual. Train on your own nominal footage (README: Your own data)")
    else:
        note = f"note: {model_dir} was trained on {trained}, and {data} is the rendered demo world"
    print(note, flush=True)
    return note
