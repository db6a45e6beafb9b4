#!/usr/bin/env python3
"""Checks that every ```cpp block of a chapter NN_name.md is an excerpt of its program
NN_name.cpp, and every ```python block one of NN_name.py: each line of the block, leading and
trailing spaces aside, must appear in the program in the same order, consecutive lines of the
block consecutive in the program ("// ..." or "# ..." lines mark a gap). Illustrative code that
is not in a program goes into ```c++ (or ```py) blocks.
Run by ctest as guide_snippets. usage: check_snippets.py [GUIDE_DIR]"""
import glob
import os
import re
import sys


def blocks(markdown, lang):
    return re.findall(r"^```" + lang + r"\n(.*?)^```", markdown, flags=re.S | re.M)


def is_excerpt(block, program):
    prog = [line.strip() for line in program.splitlines()]
    pos = 0
    for piece in re.split(r"^\s*(?://|#) \.\.\.\s*$", block, flags=re.M):
        lines = [line.strip() for line in piece.strip("\n").splitlines()]
        if not lines:
            continue
        for start in range(pos, len(prog) - len(lines) + 1):
            if prog[start:start + len(lines)] == lines:
                pos = start + len(lines)
                break
        else:
            return False
    return True


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    bad = 0
    for md in sorted(glob.glob(os.path.join(root, "[0-9][0-9]_*.md"))):
        text = open(md, encoding="utf-8").read()
        for lang, ext in (("cpp", ".cpp"), ("python", ".py")):
            path = md[:-3] + ext
            program = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
            for i, block in enumerate(blocks(text, lang)):
                if not is_excerpt(block, program):
                    print(f"{os.path.basename(md)}: {lang} block {i + 1} is not an excerpt of "
                          f"{os.path.basename(path)}:\n{block}")
                    bad += 1
    print("guide snippets:", "FAILED" if bad else "every cpp and python block is in its program")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
