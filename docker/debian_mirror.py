"""Print the first Debian mirror that this machine's apt sources list for a suite (used by build-test-images.sh).

    python3 docker/debian_mirror.py bookworm /etc/apt/sources.list /etc/apt/sources.list.d/*.sources

Reads both formats: one-line ``deb [options] URI SUITE COMPONENTS`` (``.list``) and deb822 paragraphs
with ``Types:``, ``URIs:`` and ``Suites:`` fields (``.sources``). Exits 1 when no source has the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

MAX_BYTES = 1 << 20  # an apt sources file is a few lines; refuse to read anything huge


def from_deb822(text: str, suite: str) -> str | None:
    for paragraph in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in paragraph.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.lstrip().startswith("#") and not line[:1].isspace():
                fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"])[0].lower() == "no":
            continue
        if "deb" in fields.get("types", []) and suite in fields.get("suites", []) and fields.get("uris"):
            return fields["uris"][0].rstrip("/")
    return None


def from_one_line(text: str, suite: str) -> str | None:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options, e.g. [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and words[1] == suite:
            return words[0].rstrip("/")
    return None


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: debian_mirror.py SUITE SOURCES_FILE...", file=sys.stderr)
        return 2
    suite, files = argv[0], argv[1:]
    for name in files:
        path = Path(name)
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        mirror = from_deb822(text, suite) if path.suffix == ".sources" else from_one_line(text, suite)
        if mirror:
            print(mirror)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
