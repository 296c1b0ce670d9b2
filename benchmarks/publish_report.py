"""Copy a study's REPORT.md and the figures it shows into a folder of its own (for docs/results/<profile>/):
every image link is rewritten to the copy, nothing but Markdown and PNG files is written.

    python benchmarks/publish_report.py report/cpu/REPORT.md docs/results/cpu [--note "how it was run"]
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path


def publish(report: Path, out: Path, note: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    text = report.read_text()
    copied: dict[Path, str] = {}

    def relink(m: re.Match) -> str:
        alt, rel = m.group(1), m.group(2)
        src = (report.parent / rel).resolve()
        if src.suffix.lower() != ".png" or not src.is_file():
            raise SystemExit(f"{report}: {rel} is not a PNG file that exists")
        if src not in copied:
            name = f"{src.parent.name}_{src.name}"  # runs/<stage>/<figure>.png -> <stage>_<figure>.png
            shutil.copyfile(src, out / name)
            copied[src] = name
        return f"![{alt}]({copied[src]})"

    text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", relink, text)
    if note:
        lines = text.splitlines()
        text = "\n".join(lines[:1] + ["", f"> {note}"] + lines[1:]) + "\n"
    (out / "REPORT.md").write_text(text)
    return [out / n for n in copied.values()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--note", default=None, help="a line put under the report's title")
    args = p.parse_args()
    files = publish(args.report, args.out, args.note)
    total = sum(f.stat().st_size for f in files)
    print(f"wrote {args.out / 'REPORT.md'} and {len(files)} figures ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
