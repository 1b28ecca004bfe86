"""Extract recording sessions of a Donkey Car "tub" (record_N.json + N_cam-image_array_.jpg) into image
folders the real-footage benchmark reads (`ood-monitor data real --recording FOLDER`).

The indoor-robot footage of the real-footage benchmark is the tub of github.com/medeiros-ph/Trekking_Pro_2019
(commit 1d333c65, a phone camera on a small ground robot in a lab, 2019-04-05 and 2019-04-12; the repository
states no licence, so the frames are not committed here: clone it and run this script). A session is a run
of records with no stamp gap over `--gap` seconds; each session becomes `OUT/<name>/NNNNNN.jpg` in record
order (rotated upright where the phone was mounted sideways) plus `stamps.csv` (frame, stamp_ns) and
`session.json`.

    git clone https://github.com/medeiros-ph/Trekking_Pro_2019 && cd Trekking_Pro_2019 && git checkout 1d333c65
    python scripts/extract_donkey_tub.py Trekking_Pro_2019/tub --out real_sources --min-frames 300

The moving-camera tuning recording (docs/real_footage.md) is the Donkey Car 4 tub of
github.com/JustinWit/csc3520-autonomous-rc-car (commit 3e7fc5df, an RC car driving a taped track in a lab;
no licence stated, so not committed either):

    git clone https://github.com/JustinWit/csc3520-autonomous-rc-car && git -C csc3520-autonomous-rc-car checkout 3e7fc5df
    python scripts/extract_donkey_tub.py csc3520-autonomous-rc-car/data --out real_sources --min-frames 1000 --width 160
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from datetime import datetime
from pathlib import Path

import cv2

RECORD = re.compile(r"record_(\d+)\.json$")


def records(tub: Path) -> list[tuple[int, datetime, Path]]:
    """(index, timestamp, image path) of every record, in index order: a Donkey Car 3 tub (record_N.json
    beside the images) or a Donkey Car 4 tub (catalog_N.catalog, one JSON record per line, images in
    images/)."""
    rows = []
    for path in tub.iterdir():
        m = RECORD.match(path.name)
        if m:
            rec = json.loads(path.read_text())
            rows.append((int(m.group(1)), datetime.fromisoformat(rec["timestamp"]), tub / rec["cam/image_array"]))
        elif path.suffix == ".catalog":
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    rows.append((int(rec["_index"]), datetime.fromtimestamp(rec["_timestamp_ms"] / 1000.0),
                                 tub / "images" / rec["cam/image_array"]))
    if not rows:
        raise ValueError(f"no record_N.json or catalog_N.catalog in {tub}: not a Donkey Car tub")
    return sorted(rows)


def sessions(rows: list, gap_s: float) -> list[list]:
    """Runs of records whose consecutive stamps move forward by at most `gap_s`."""
    out, current = [], [rows[0]]
    for prev, row in zip(rows, rows[1:], strict=False):
        step = (row[1] - prev[1]).total_seconds()
        if 0 < step <= gap_s:
            current.append(row)
        else:
            out.append(current)
            current = [row]
    out.append(current)
    return out


def write_session(run: list, folder: Path, width: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    t0 = run[0][1]
    with (folder / "stamps.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "stamp_ns"])
        for i, (_, stamp, image_path) in enumerate(run):
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"cannot decode {image_path}")
            h, w = image.shape[:2]
            image = cv2.resize(image, (width, int(round(h * width / w))), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            writer.writerow([i, int((stamp - t0).total_seconds() * 1e9)])
    seconds = (run[-1][1] - t0).total_seconds()
    info = {"records": [run[0][0], run[-1][0]], "start": t0.isoformat(), "frames": len(run),
            "seconds": round(seconds, 2), "fps": round((len(run) - 1) / max(seconds, 1e-9), 2)}
    (folder / "session.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tub", type=Path, help="the tub folder (record_N.json files and their images)")
    p.add_argument("--out", type=Path, required=True, help="output folder: one sub-folder per session")
    p.add_argument("--gap", type=float, default=2.0, help="seconds between records that end a session")
    p.add_argument("--min-frames", type=int, default=300, help="sessions shorter than this are skipped")
    p.add_argument("--width", type=int, default=320, help="output width in pixels (aspect kept)")
    args = p.parse_args(argv)
    for run in sessions(records(args.tub), args.gap):
        if len(run) < args.min_frames:
            continue
        name = f"tub_{run[0][1]:%Y%m%d_%H%M%S}"
        info = write_session(run, args.out / name, args.width)
        print(f"{name}: {info['frames']} frames, {info['seconds']} s, {info['fps']} fps (records {info['records']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
