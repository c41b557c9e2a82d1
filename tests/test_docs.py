"""Every link and section name in the README, docs/ and option-file comments resolves."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
DOC_MENTION = re.compile(r'\b(docs/[\w./-]+\.md)(#[\w-]+)?')


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r'[`*]', '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(page: Path) -> set:
    text = re.sub(r'```.*?```', '', page.read_text(encoding='utf-8'), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r'^#{1,6}\s+(.+?)\s*$', text, re.M)}


def check(target: str, base: Path, where: str):
    path, _, anchor = target.partition('#')
    page = (base / path).resolve() if path else None
    if path:
        assert page.exists(), f'{where}: link to {target}: {path} does not exist'
    if anchor:
        page = page or base
        assert page.suffix == '.md', f'{where}: anchor #{anchor} on a non-Markdown target {target}'
        assert anchor in anchors(page), f'{where}: no section #{anchor} in {page.relative_to(REPO)}'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_links_and_anchors_resolve(page):
    text = re.sub(r'```.*?```', '', page.read_text(encoding='utf-8'), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r'[a-z]+://|mailto:', target):
            continue
        if target.startswith('#'):
            assert target[1:] in anchors(page), f'{page.name}: no section {target}'
        else:
            check(target, page.parent, page.name)
    for path, anchor in DOC_MENTION.findall(page.read_text(encoding='utf-8')):
        check(path + anchor, REPO, page.name)


def test_option_file_comments_point_at_existing_docs_and_files():
    files = sorted((REPO / 'options').rglob('*.yml'))
    assert files
    for f in files:
        for path, anchor in DOC_MENTION.findall(f.read_text(encoding='utf-8')):
            check(path + anchor, REPO, str(f.relative_to(REPO)))
        for path in re.findall(r'\b(options/[\w./-]+\.yml)', f.read_text(encoding='utf-8')):
            assert (REPO / path).is_file(), f'{f.relative_to(REPO)} mentions {path}, which does not exist'


def test_the_readme_stays_a_front_door():
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    assert len(text.splitlines()) <= 250
    assert text.index('make demo') < text.index('## ') and 'make test' in text[:text.index('## ')]
