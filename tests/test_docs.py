"""README stays short, and the docs hold together: every relative link in README.md and
docs/*.md leads to a file (and heading) that exists, every section params.yaml's comments name
exists, and the prose speaks to users, not about how the project was made."""

import re
from pathlib import Path

import pytest
from conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 260

LINK = re.compile(r"\]\(([^)\s]+)\)")
# A section named in a params.yaml comment: README or docs/<page>.md, then its heading in quotes.
SECTION = re.compile(r"(README|docs/[\w-]+\.md)\W*\"([^\"]+)\"")
# Words about how the project was made, not about what it does.
BACKSTAGE = re.compile(r"\b(issues?|sessions?|goals?)\b", re.IGNORECASE)
# Phrases in which one of those words means something else: none so far.
ALLOWED: tuple[str, ...] = ()


def prose(text: str) -> str:
    """`text` without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: Path) -> list[str]:
    return re.findall(r"^#+ +(.+?) *$", prose(page.read_text(encoding="utf-8")), re.MULTILINE)


def comments(path: Path) -> str:
    """The comments of a YAML file (what follows `#` on each line)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line.split("#", 1)[1] for line in lines if "#" in line)


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_lead_to_files_and_headings(page):
    broken = []
    for link in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.is_file():
            broken.append(f"{link}: no file {path}")
        elif anchor and anchor not in {slug(h) for h in headings(path)}:
            broken.append(f"{link}: no heading #{anchor} in {path.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_params_comments_name_existing_sections():
    named = SECTION.findall(comments(REPO / "params.yaml"))
    missing = [
        f'{page} "{heading}"'
        for page, heading in named
        if heading not in headings(REPO / ("README.md" if page == "README" else page))
    ]
    assert not missing, f"params.yaml names sections that do not exist: {missing}"
    unnamed = re.findall(r"\b(?:README|docs/)\S*", comments(REPO / "params.yaml"))
    assert len(unnamed) == len(named), f"params.yaml: name the section of {unnamed}"


@pytest.mark.parametrize(
    ("name", "text"),
    [pytest.param(page.name, page.read_text(encoding="utf-8"), id=page.name) for page in PAGES]
    + [pytest.param("params.yaml", comments(REPO / "params.yaml"), id="params.yaml comments")],
)
def test_prose_speaks_to_users(name, text):
    for allowed in ALLOWED:
        text = text.replace(allowed, "")
    found = sorted({match.lower() for match in BACKSTAGE.findall(text)})
    assert not found, f"{name}: {found}"
