"""The documentation stays short at the top and its links resolve.

README.md is at most 200 lines (the rest lives in ``docs/*.md``); every relative link and image in README.md,
``docs/*.md`` and the bundle's model card points to an existing file (and, for a Markdown target with an anchor,
to an existing heading); every ``scripts/<x>`` and ``bundle/configs/<x>`` path named in README.md exists.
"""

from __future__ import annotations

import re
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, REPO / "bundle" / "docs" / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (a ``[x](y)`` inside code is not a link)."""
    return _CODE.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Targets of the Markdown links and images in ``text``, outside code."""
    return _LINK.findall(_prose(text))


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text`` (lower case, punctuation dropped, spaces to ``-``)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Every relative link of ``page`` (or of ``text`` read as if it were ``page``) whose file or heading does not
    exist, as ``"page: target (why)"``."""
    text = page.read_text(encoding="utf-8") if text is None else text
    bad = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http(s):, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        if not path_part:  # an anchor on this page
            if anchor not in github_anchors(text):
                bad.append(f"{page.relative_to(REPO)}: {target} (no such heading on this page)")
            continue
        dest = (page.parent / path_part).resolve()
        if not dest.exists():
            bad.append(f"{page.relative_to(REPO)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor} in {dest.name})")
    return bad


class TestDocs(unittest.TestCase):
    def test_readme_short(self):
        n = len(README.read_text(encoding="utf-8").splitlines())
        self.assertLessEqual(n, 200, f"README.md has {n} lines; move detail into docs/*.md")

    def test_links_resolve(self):
        self.assertGreater(len(PAGES), 3)
        bad = [b for page in PAGES for b in broken_links(page)]
        self.assertEqual(bad, [], "broken relative links:\n" + "\n".join(bad))

    def test_readme_links_every_docs_page(self):
        targets = {(REPO / t.partition("#")[0]).resolve() for t in links(README.read_text(encoding="utf-8"))}
        missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in targets]
        self.assertEqual(missing, [], f"docs pages not linked from README.md: {missing}")

    def test_readme_paths_exist(self):
        text = README.read_text(encoding="utf-8")
        paths = set(re.findall(r"(?<![\w./-])((?:scripts|bundle/configs)/[\w.-]*\w)", text))
        self.assertTrue(any(p.startswith("scripts/") for p in paths))
        self.assertTrue(any(p.startswith("bundle/configs/") for p in paths))
        missing = sorted(p for p in paths if not (REPO / p).exists())
        self.assertEqual(missing, [], f"README.md names paths that do not exist: {missing}")

    def test_checker_catches_a_broken_link(self):
        probe = REPO / "docs" / "probe.md"  # not written: its text is given
        text = "[a](missing.md) [b](training.md#no-such-heading) [c](training.md) [d](#local) [f](#nowhere) `[e](x.md)`\n## Local"
        self.assertEqual(
            links(text), ["missing.md", "training.md#no-such-heading", "training.md", "#local", "#nowhere"]
        )
        self.assertEqual(
            broken_links(probe, text),
            [
                "docs/probe.md: missing.md (no such file)",
                "docs/probe.md: training.md#no-such-heading (no heading #no-such-heading in training.md)",
                "docs/probe.md: #nowhere (no such heading on this page)",
            ],
        )
        self.assertEqual(
            github_anchors(
                "## Saliency (where did the model look?)\n## 3. What the annotator sees\n## Limits\n## Limits"
            ),
            {"saliency-where-did-the-model-look", "3-what-the-annotator-sees", "limits", "limits-1"},
        )


if __name__ == "__main__":
    unittest.main()
