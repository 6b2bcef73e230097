"""Final-answer extraction from chain-of-thought text.

Every scan here is linear in the text length (no backtracking regexes over the whole completion), so a
hostile completion (megabytes, 2000-deep braces) costs milliseconds, not seconds.

Conventions:
- With a ``</think>`` the answer is looked for only after the last one (the reasoning is not the answer);
  a ``<think>`` never closed (a truncated completion) has no answer.
- ``\\boxed{..}`` / ``\\fbox{..}`` win over any phrase marker. All boxes of the answer region are returned:
  several different boxes are a hedge, and the comparison requires every one of them to match.
- An empty box, or a box left open (a truncated completion), gives no answer.
- Without a box: the last "final answer is", "The answer is", "**Final Answer**", "Answer:" or "#### " marker.
- A completion that is only a short single line (a bare "42", at most 40 characters) is its own answer.
- Prose with none of those: its last math block ($..$, \\(..\\), \\[..\\]), else its last number.
"""

from __future__ import annotations

import re

_BOX_WORDS = ("\\boxed", "\\fbox")
_MAX_ANSWER = 50_000  # a 60x60 matrix fits; longer "answers" are not answers; keeps later stages bounded

# Phrase markers, most specific first; each finds where the answer text starts.
_MARKERS = [
    re.compile(r"\*\*\s*final answer\s*:?\s*\*\*\s*:?", re.I),
    re.compile(r"final answer\s*(?:is|:)\s*:?", re.I),
    re.compile(r"the answer is\s*:?", re.I),
    re.compile(r"####"),
    re.compile(r"(?<![a-z])answer\s*:", re.I),
]


def _match_brace(text: str, open_at: int) -> int:
    """Index of the brace closing text[open_at] == '{', or -1 when it never closes. Skips escaped \\{ \\}."""
    depth = 0
    i, n = open_at, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def find_boxes(text: str) -> list[str | None]:
    """Contents of every \\boxed/\\fbox in order; None for one that is left open."""
    out: list[str | None] = []
    i = 0
    while True:
        hits = [(text.find(w, i), w) for w in _BOX_WORDS]
        hits = [(p, w) for p, w in hits if p >= 0]
        if not hits:
            return out
        pos, word = min(hits)
        j = pos + len(word)
        if j < len(text) and (text[j].isalpha()):  # \boxedx is some other macro
            i = j
            continue
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            end = _match_brace(text, j)
            if end < 0:
                out.append(None)
                return out
            out.append(text[j + 1:end])
            i = end + 1
        else:  # "\boxed 5": one token
            m = re.match(r"[^\s$]+", text[j:j + _MAX_ANSWER])
            out.append(m.group(0) if m else "")
            i = j + (m.end() if m else 0)


_WRAPPERS = [("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")]


def clean(ans: str) -> str:
    """Strip math delimiters, a trailing period and surrounding space from an answer string."""
    s = ans.strip()
    for _ in range(3):
        before = s
        s = s.strip().rstrip(".").strip()
        for a, b in _WRAPPERS:
            if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
                s = s[len(a):len(s) - len(b)].strip()
        if s == before:
            break
    return s


def _after_marker(text: str) -> str | None:
    found = _marker(text)
    return found[1] if found else None


def _marker(text: str, strong_only: bool = False) -> tuple[int, str] | None:
    """(where the last answer marker starts, the answer text after it), or None."""
    best: tuple[int, int] | None = None
    for rule in (_MARKERS[:-1] if strong_only else _MARKERS):
        last = None
        for m in rule.finditer(text):
            last = m
        if last is not None:
            if best is None or last.start() > best[0]:
                best = (last.start(), last.end())
    if best is None:
        return None
    return best[0], _answer_text(text[best[1]:best[1] + 4000])


def _answer_text(rest: str) -> str:
    rest = rest.lstrip(" \t*:")
    rest = rest.lstrip("\n").lstrip(" \t*:") if rest.startswith("\n") else rest
    # Display math may span lines: take the whole $$..$$ / \[..\] block.
    for a, b in (("$$", "$$"), ("\\[", "\\]")):
        if rest.startswith(a):
            end = rest.find(b, len(a))
            if end > 0:
                return rest[:end + len(b)]
    line = rest.split("\n", 1)[0]
    # "The answer is 42. Done." -> "42": cut at a sentence end (a period followed by a space), outside $..$.
    in_math = False
    for k, c in enumerate(line):
        if c == "$" and (k == 0 or line[k - 1] != "\\"):
            in_math = not in_math
        elif c == "." and not in_math and (k + 1 == len(line) or line[k + 1] == " ") and k > 0:
            if not (line[k - 1].isdigit() and k + 1 < len(line) and line[k + 1].isdigit()):
                return line[:k]
    return line


_IS_TAIL = re.compile(r"^[A-Za-z][^=]*\b(?:is|are|equals|was)\s+(.+)$")


def _marked_answer(found: str) -> str | None:
    c = clean(_after_is(found))
    if len(re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}", c.replace("\\text", ""))) >= 3:
        # Still a sentence ("Jane started growing Sphere 3 hours ago"): its last math block or number.
        c = _last_math_or_number(c) or c
    return c if c and len(c) <= _MAX_ANSWER else None


def _after_is(found: str) -> str:
    """'The volume of $ABCD$ is 120' -> '120': a marker followed by a sentence names its value at the end."""
    m = _IS_TAIL.match(found.strip())
    return m.group(1) if m else found


def answer_region(text: str) -> str:
    """The part of a completion that may hold the final answer (after the last </think>, if any)."""
    cut = text.rfind("</think>")
    if cut < 0 and "<think>" in text:
        return ""  # still thinking (cut off by the length limit): no final answer yet
    return text[cut + len("</think>"):] if cut >= 0 else text


def extract_candidates(completion: str) -> list[str] | None:
    """Every answer the completion commits to (usually one), cleaned; None when it commits to none."""
    if not isinstance(completion, str):
        return None
    text = answer_region(completion)
    boxes = find_boxes(text)
    last_box = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    final = _marker(text, strong_only=True) if boxes else None
    if final is not None and final[0] > last_box and re.search(r"[\d$\\]", final[1]):
        # "\boxed{200} ... \boxed{255} ... Final Answer: The final answer is $10,455$": boxes before a later
        # explicit final answer were intermediate results; the marked answer is the one committed to.
        c = _marked_answer(final[1])
        if c:
            return [c]
    if boxes:
        if any(b is None or not clean(b) for b in boxes):
            return None  # an empty or unterminated box never counts
        cands = [clean(b) for b in boxes]
        if any(len(c) > _MAX_ANSWER for c in cands):
            return None
        return cands
    marked = _marker(text)
    if marked is not None:
        c = _marked_answer(marked[1])
        return [c] if c else None
    bare = text.strip()
    if bare and "\n" not in bare and len(bare) <= 40 and len(bare.split()) <= 3 and not _MATH_BLOCK.search(bare):
        return [clean(bare)] if clean(bare) else None
    last = _last_math_or_number(text)
    return [last] if last else None


# Display math may span lines; inline $..$ and \(..\) may not.
_MATH_BLOCK = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$([^$\n]+?)(?<!\\)\$", re.S)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _last_math_or_number(text: str) -> str | None:
    """Fallback for prose without a box or marker: its last math block, else its last number."""
    tail = text[-20_000:]  # the answer is at the end; bounds the scan on huge outputs
    last = None
    for m in _MATH_BLOCK.finditer(tail):
        last = m
    if last is not None:
        body = clean(next(g for g in last.groups() if g is not None))
        if body:
            return body
    nums = _NUMBER.findall(tail)
    return nums[-1].rstrip(",") if nums else None


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion (its last box or marked answer), or None when it gives none."""
    cands = extract_candidates(completion)
    return cands[-1] if cands else None


def gold_answer(gold: str) -> str | None:
    """A reference answer as datasets store it: GSM8K's rationale + '#### N', a boxed solution, or the bare answer."""
    if not isinstance(gold, str):
        gold = str(gold)
    if "####" in gold:
        gold = gold[gold.rfind("####") + 4:]
    elif "\\boxed" in gold or "\\fbox" in gold:
        boxes = [b for b in find_boxes(gold) if b]
        if boxes:
            gold = boxes[-1]
    g = clean(gold)
    return g or None
