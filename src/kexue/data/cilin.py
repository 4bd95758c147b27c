"""Readers of groups of texts that mean the same: HIT Tongyici Cilin (extended), 哈工大同义词
词林扩展版, and the similarity post's layout, one text a line with its group's id.

Each Cilin line is a code, a marker and members separated by white space:

    Aa01A02= 人类 生人 全人类      `=`  the members mean the same: a synonym group
    Aa01A06# 妇人 女人 ...          `#`  related but not synonyms: not a group
    Aa01A07@ 人丁                   `@`  a word with no synonym: not a group

Any label without white space works as the code, so your own groups drop in
(`faq17= 怎么退款 如何退款`). Texts with spaces in them (questions) come one a line instead:

    faq17<TAB>怎么退款
    faq17<TAB>如何 退款 呢        the lines of one id are one group, wherever they are
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kexue import io
from kexue.errors import DataError

SYNONYMS = "="
_LINE = re.compile(r"(\S+?)([=#@])(?:\s+(.*))?")


@dataclass(frozen=True)
class SynonymGroup:
    code: str
    members: tuple[str, ...]  # distinct, in file order


def read_cilin(path: str | Path) -> list[SynonymGroup]:
    """The synonym groups (`=` lines) of a Cilin file; DataError names a malformed line."""
    groups, seen = [], {}
    for number, line in enumerate(io.read_lines(path), start=1):
        match = _LINE.fullmatch(line.strip())
        if not match:
            raise DataError(
                f"{path}:{number}: expected 'CODE= word word ...' (marker =, # or @), "
                f"got {line[:40]!r}"
            )
        code, marker, members = match[1], match[2], (match[3] or "").split()
        if not members:
            raise DataError(f"{path}:{number}: {code}{marker} has no words")
        if marker != SYNONYMS:
            continue
        # Each `=` line is its own group. The real file reuses 7 codes for different groups
        # (Ga05A01= 灰心 ... and later Ga05A01= 计划 ...): the repeat becomes Ga05A01.2.
        seen[code] = seen.get(code, 0) + 1
        unique_code = code if seen[code] == 1 else f"{code}.{seen[code]}"
        groups.append(SynonymGroup(unique_code, tuple(dict.fromkeys(members))))
    return groups


def read_group_lines(path: str | Path) -> list[SynonymGroup]:
    """The groups of a `group_id<TAB>text` file, in the order their ids first occur, each
    with its distinct texts in file order; DataError names a malformed line."""
    members: dict[str, list[str]] = {}
    for number, line in enumerate(io.read_lines(path), start=1):
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != 2:
            raise DataError(
                f"{path}:{number}: expected group_id<TAB>text (one tab), got {len(fields) - 1} "
                f"in {line[:40]!r}"
            )
        group, text = fields
        if not group or not text:
            blank = "group id" if not group else "text"
            raise DataError(f"{path}:{number}: blank {blank}; expected group_id<TAB>text")
        members.setdefault(group, []).append(text)
    return [SynonymGroup(code, tuple(dict.fromkeys(texts))) for code, texts in members.items()]
