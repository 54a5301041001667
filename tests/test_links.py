"""Every relative link and image in README.md and docs/*.md points at a file that exists, and
every `#anchor` at a heading of the page it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in _prose(path).splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def relative_links() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), target) for path in DOC_FILES
            for target in LINK.findall(_prose(path)) if not re.match(r"[a-z]+:", target)]


def test_the_docs_have_relative_links_and_images():
    links = relative_links()
    assert any(target.endswith(".png") for _, target in links)
    assert any(target.startswith("docs/") for doc, target in links if doc == "README.md")


def test_anchor_ids_follow_githubs_rule(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# The app\n## Results on the embedded benchmark (`tiny-vit`)\n```\n# not a heading\n```\n")
    assert anchors(page) == {"the-app", "results-on-the-embedded-benchmark-tiny-vit"}


@pytest.mark.parametrize(("doc", "target"), relative_links(), ids=lambda v: str(v)[:50])
def test_relative_link_resolves(doc, target):
    file_part, _, anchor = target.partition("#")
    source = ROOT / doc
    path = (source.parent / file_part).resolve() if file_part else source
    assert path.exists(), f"{doc}: {target} points at a missing file"
    assert path.is_relative_to(ROOT), f"{doc}: {target} leaves the repository"
    if path.suffix == ".png":
        assert path.stat().st_size > 1000, f"{doc}: {target} is not an image"
    if anchor:
        assert path.suffix == ".md", f"{doc}: {target}: an anchor into a file that is not markdown"
        assert anchor in anchors(path), f"{doc}: {target}: no heading #{anchor} in {path.name}"
