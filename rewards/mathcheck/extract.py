"""Final-answer extraction from chain-of-thought text.

Every scan here is linear in the text length (no backtracking regexes over the whole completion), so a
hostile completion (megabytes, 2000-deep braces) costs milliseconds, not seconds.

Conventions:
- With a ``</think>`` the answer is looked for only after the last one (the reasoning is not the answer);
  a ``<think>`` never closed (a truncated completion) has no answer.
- ``\\boxed{..}`` / ``\\fbox{..}`` win over any phrase marker. The final answer is the last box together with
  the boxes joined to it by list words (final_boxes has the rule); earlier boxes were steps or corrected tries.
- An empty box, or a box left open (a truncated completion), gives no answer.
- Without a box: the last "final answer is", "The answer is", "**Final Answer**", "Answer:" or "#### " marker.
- A completion that is only a short single line (a bare "42", at most 40 characters) is its own answer.
- Prose with none of those: its last math block ($..$, \\(..\\), \\[..\\]), else its last number.
"""

from __future__ import annotations

import re

_BOX_WORDS = ("\\boxed", "\\fbox")
_TOKEN = re.compile(r"[^\s$]+")
_MAX_ANSWER = 50_000  # a 60x60 matrix fits; longer "answers" are not answers; keeps later stages bounded

# Phrase markers, most specific first; each finds where the answer text starts.
_MARKERS = [
    re.compile(r"\*\*\s*final answer\s*:?\s*\*\*\s*:?", re.I),
    re.compile(r"final answer\s*(?:is|:)\s*:?", re.I),
    re.compile(r"the answer is\s*:?", re.I),
    re.compile(r"####"),
    # Other languages' markers ("Réponse :", "答案：", "答："); a full-width colon counts as a colon.
    re.compile(r"(?<![a-zà-ÿ])(?:r[ée]ponse|respuesta|resposta|risposta|antwort|ответ|odpowied[źz]|cevap|jawaban)"
               r"(?:\s+finale?|\s+final)?\s*[:：]", re.I),
    re.compile(r"最终答案\s*(?:是|为|[:：])?|答案\s*(?:是|为|[:：])?|(?<![解回])答\s*[:：]|解答\s*[:：]"),
    # "Answer $\frac12$" / "**Answer** \(5\)": a line-leading Answer followed directly by math.
    re.compile(r"(?:^|\n)[ \t#*]*answer\**[ \t]*(?=\$|\\\(|\\\[)", re.I),
    re.compile(r"(?<![a-z])answer\s*[:：]", re.I),
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


def box_spans(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, contents) of every \\boxed/\\fbox in order; contents None for one that is left open."""
    out: list[tuple[int, int, str | None]] = []
    i = 0
    nxt = {w: text.find(w) for w in _BOX_WORDS}  # next hit per word, re-searched only once passed (linear)
    while True:
        for w in _BOX_WORDS:
            if 0 <= nxt[w] < i:
                nxt[w] = text.find(w, i)
        hits = [(p, w) for w, p in nxt.items() if p >= 0]
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
                out.append((pos, len(text), None))
                return out
            out.append((pos, end + 1, text[j + 1:end]))
            i = end + 1
        else:  # "\boxed 5": one token
            # pos/endpos, not a slice: copying 50 kB per box made a megabyte of "\boxed 1" cost a second.
            m = _TOKEN.match(text, j, j + _MAX_ANSWER)
            out.append((pos, m.end() if m else j, m.group(0) if m else ""))
            i = m.end() if m else j


# What may stand between two boxes of one answer ("\boxed{1}, \boxed{2} and \boxed{3}", "$x=\boxed{1}$ or
# $x=\boxed{2}$"): math delimiters, spacing, list words, labels. Anything else (prose) separates answers.
_GAP_NOISE = re.compile(r"\\(?:text|mbox|textrm|mathrm|textnormal)\s*\{\s*([^{}]*?)\s*\}|\\(?:quad|qquad|[,;:! ()\[\]])|"
                        r"\\\\|\$|[\s{}&]")
_GAP_LABEL = re.compile(r"(?<![A-Za-z])[A-Za-z]{1,3}(?:_\{?\w+\}?)?'*\s*=")
_GAP_ELLIPSIS = re.compile(r"\\[lc]?dots[bc]?|\.\.\.|…")
_GAP_LIST = {",", ";", "and", "or"}
_GAP_HEDGE = {"maybe", "perhaps", "possibly", "probably", "alternatively", "either", "might", "could"}
_MAX_GAP = 80
_MAX_GROUP = 256  # more boxes than this in one answer is a spray; the caller rejects it without comparing


def _gap_kind(gap: str) -> str:
    """'list' (same answer continues), 'hedge' (an alternative is offered), 'ellipsis' (a list with ... in it)
    or 'prose' (a new statement: the earlier box was an intermediate result or a corrected attempt)."""
    if len(gap) > _MAX_GAP:
        return "prose"
    g = _GAP_NOISE.sub(lambda m: " %s " % (m.group(1) or ""), gap)
    g = _GAP_LABEL.sub(" ", g)
    ellipsis = bool(_GAP_ELLIPSIS.search(g))
    tokens = re.findall(r"[A-Za-z]+|\S", _GAP_ELLIPSIS.sub(" ", g).lower())
    if any(t in _GAP_HEDGE for t in tokens):
        return "hedge" if all(t in _GAP_LIST or t in _GAP_HEDGE for t in tokens) else "prose"
    if all(t in _GAP_LIST for t in tokens):
        return "ellipsis" if ellipsis else "list"
    return "prose"


# A box that a statement of the final answer introduces ("The final answer is \\boxed{18}"), and the words that
# retract an earlier answer. Two stated final answers with no retraction between them are a hedge.
_STATED = re.compile(r"final answer|the answer is|answer\**\s*[:：]|答案|r[ée]ponse|respuesta|antwort|ответ", re.I)
_RETRACT = re.compile(r"(?<![a-z])(?:wait|actually|mistakes?|mistaken|errors?|erroneous|wrong|incorrect|correct(?:ion|ed|ing)|"
                      r"re-?check\w*|re-?comput\w*|re-?calculat\w*|re-?do\w*|re-?examin\w*|re-?evaluat\w*|"
                      r"re-?consider\w*|revis\w*|instead|oops|hmm+|however|but|double-check\w*|fix\w*|let me|"
                      r"no,|not right|invalid|doesn't work|does not work|contradict\w*)(?![a-z])", re.I)


_ALTERNATIVE = re.compile(r"(?<![a-z])(?:also|another|alternative\w*|otherwise|else|note|grader|expected|accept\w*|"
                          r"equivalently|possibly|maybe|perhaps|might|could|either)(?![a-z])|\?", re.I)


def _stated(text: str, start: int) -> bool:
    """The box at `start` is introduced as the final answer on its own line."""
    line_start = text.rfind("\n", max(0, start - 120), start) + 1
    return bool(_STATED.search(text, max(line_start, start - 120), start))


def final_boxes(text: str, stated: bool = False) -> tuple[list[str | None], bool]:
    """The boxes that state the final answer, and whether an alternative was offered among them.

    Rule: the last box counts, with the boxes joined to it by list words (",", ";", "and", "or", "\\ldots",
    labels such as "x ="): those are one list answer. Boxes separated by prose are successive statements:
    the earlier ones were intermediate results or corrected attempts. Boxes joined by a hedge word ("or
    maybe", "perhaps") are a hedge, which is wrong unless every box restates the gold."""
    spans = box_spans(text)
    if not spans:
        return [], False
    group: list[str | None] = [spans[-1][2]]
    boxes = 1  # of the group's items, those that are boxes (a box may hold \ldots itself: counted apart)
    hedge = False
    for (_, end, content), (start, _, _) in zip(reversed(spans[:-1]), reversed(spans[1:])):
        kind = _gap_kind(text[end:start])
        if kind == "prose" or len(group) > _MAX_GROUP:
            break
        hedge = hedge or kind == "hedge"
        if kind == "ellipsis":
            group.insert(0, "\\ldots")
        group.insert(0, content)
        boxes += 1
    if stated:
        # "Final answer: \boxed{18}. ... Final answer: \boxed{20}.": an earlier box stated as the final answer and
        # never retracted is a second final answer, so the two are a hedge (right only when both restate the gold).
        first = len(spans) - boxes  # the group's first box
        for k in range(first - 1, max(-1, first - 51), -1):
            if _stated(text, spans[k][0]):
                if spans[k][2] is not None and not _RETRACT.search(text, spans[k][1], spans[first][0]):
                    return [spans[k][2]] + group, True
                break
        # "\\boxed{18} (note: \\boxed{20} is what is expected)", "\\boxed{18}. Is it \\boxed{20}?": a last box offered
        # as an alternative to the one before it, not as a correction of it, is a hedge too.
        if first > 0 and spans[first - 1][2] is not None and spans[first][0] - spans[first - 1][1] <= 300:
            a, b = spans[first - 1][1], spans[first][0]
            line_end = text.find("\n", spans[-1][1], spans[-1][1] + 80)
            asked = "?" in text[spans[-1][1]:line_end if line_end >= 0 else spans[-1][1] + 80]  # "Is \\boxed{20} right?"
            if (asked or _ALTERNATIVE.search(text, a, b)) and not _RETRACT.search(text, a, b):
                return [spans[first - 1][2]] + group, True
    return group, hedge


_WRAPPERS = [("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")]


def clean(ans: str) -> str:
    """Strip math delimiters, a trailing period and surrounding space from an answer string."""
    s = ans.strip()
    for _ in range(3):
        before = s
        s = s.strip().rstrip(".。").strip()
        for a, b in _WRAPPERS:
            if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
                s = s[len(a):len(s) - len(b)].strip()
        if s == before:
            break
    return s


def _marker(text: str, strong_only: bool = False, end: int | None = None) -> tuple[int, str] | None:
    """(where the last answer marker before `end` starts, the answer text after it), or None."""
    best: tuple[int, int] | None = None
    for rule in (_MARKERS[:-1] if strong_only else _MARKERS):
        last = None
        for m in rule.finditer(text, 0, len(text) if end is None else end):
            last = m
        if last is not None:
            if best is None or last.start() > best[0]:
                best = (last.start(), last.end())
    if best is None:
        return None
    return best[0], _answer_text(text[best[1]:best[1] + 4000])


def _answer_text(rest: str) -> str:
    rest = _strip_bold(rest)
    rest = rest.lstrip("\n").lstrip(" \t*:：") if rest.startswith("\n") else rest
    # Display math may span lines: take the whole $$..$$ / \[..\] block.
    for a, b in (("$$", "$$"), ("\\[", "\\]")):
        if rest.startswith(a):
            end = rest.find(b, len(a))
            if end > 0:
                return rest[:end + len(b)]
    line = _strip_bold(rest.split("\n", 1)[0])
    # Inline math broken over lines ("$\frac{1}{\n2}$"): a line with an open $ or \( runs to its closing.
    if line.count("$") - line.count("\\$") == 1 or line.count("\\(") > line.count("\\)"):
        close = "$" if line.count("\\(") <= line.count("\\)") else "\\)"
        end = rest.find(close, rest.find("$" if close == "$" else "\\(") + 1)
        if 0 < end < 1000:
            return rest[:end + len(close)]
    # "The answer is 42. Done." -> "42": cut at a sentence end (a period followed by a space), outside $..$.
    in_math = False
    for k, c in enumerate(line):
        if c == "$" and (k == 0 or line[k - 1] != "\\"):
            in_math = not in_math
        elif c == "." and not in_math and (k + 1 == len(line) or line[k + 1] == " ") and k > 0:
            if not (line[k - 1].isdigit() and k + 1 < len(line) and line[k + 1].isdigit()):
                return line[:k]
    return line


def _strip_bold(line: str) -> str:
    """'**Answer: 18**' / '**The answer is $2$.**': markdown emphasis around an answer line is not the answer."""
    line = line.lstrip(" \t*_:：")
    if line.startswith("\n"):
        line = line.lstrip("\n").lstrip(" \t*_:：")
    head = line.split("\n", 1)
    first = head[0].rstrip()
    if first.endswith(("**", "__")):
        first = first.rstrip("*_ ").rstrip()
    return first + ("\n" + head[1] if len(head) > 1 else "")


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


# A completion that runs on into the chat template's next turn: everything from the first turn marker on is not
# the model's answer (it is a hallucinated user turn, or the next sample).
_TURN = re.compile(r"<\|im_start\|>|<\|im_end\|>|<\|eot_id\|>|<\|start_header_id\|>|<\|endoftext\|>|<\|end\|>|"
                   r"<\|user\|>|<\|assistant\|>|<end_of_turn>|<start_of_turn>|</s>|<｜end▁of▁sentence｜>|<｜User｜>")
_PLAIN_TURN = re.compile(r"\n[ \t]*(?:User|USER|Human|HUMAN)[ \t]*:")


def cut_turn(text: str) -> str:
    """The completion up to the chat template's first turn marker (<|im_start|>user, <|eot_id|>, a plain
    "User:" line, ...)."""
    if "<" in text:
        m = _TURN.search(text)
        text = text[:m.start()] if m else text
    if "User" in text or "USER" in text or "Human" in text or "HUMAN" in text:
        m = _PLAIN_TURN.search(text)
        text = text[:m.start()] if m else text
    return text


def answer_region(text: str) -> str:
    """The part of a completion that may hold the final answer (after the last </think>, if any)."""
    text = cut_turn(text)
    cut = text.rfind("</think>")
    if cut < 0 and "<think>" in text:
        return ""  # still thinking (cut off by the length limit): no final answer yet
    return text[cut + len("</think>"):] if cut >= 0 else text


_OUTPUT_INFO = re.compile(r"(?:output|stdout|result|console|text output|execution output)\s*", re.I)
_QUOTED = re.compile(r'"[^"\n]*"|“[^”\n]*”|`[^`\n]+`')
# Python-style comparisons only: "=", \\equiv and \\neq around a box are mathematics ("7!\\times 2!=\\boxed{..}").
_CLAIM_AFTER = re.compile(r"[\s$]*(?:==|!=)")
_CLAIM_BEFORE = re.compile(r"(?<![!\d}])(?:==|!=)[\s$]*$")
_CLAIM_TRUTH = re.compile(r"(?:\bis|\bare|==|returns|evaluates to|->|→|gives)\s*\**\s*(?:True|False)\b")


def prose(text: str) -> str:
    """The text with what is not prose blanked out (same length, newlines kept), so no box or marker in it is read
    as the answer: ``` code blocks (an unclosed one runs to the end), HTML comments, quoted strings and inline
    code holding a box, and boxes inside claims ("\\boxed{18} == \\boxed{20} is True"). With tool use (a
    ```output block), the answer is what is stated after the last tool output: everything before it goes too."""
    spans: list[tuple[int, int]] = []
    if "```" in text:
        at, n = text.find("```"), len(text)
        while at >= 0:
            eol = text.find("\n", at)
            info = text[at + 3:eol if eol >= 0 else n]
            close = text.find("```", (eol if eol >= 0 else n))
            if close < 0:
                spans.append((at, n))
                break
            spans.append((at, close + 3))
            if _OUTPUT_INFO.fullmatch(info.strip()):
                spans.append((0, close + 3))  # tool output: the answer comes after it
            at = text.find("```", close + 3)
    if "<!--" in text:
        at = text.find("<!--")
        while at >= 0:
            close = text.find("-->", at + 4)
            end = close + 3 if close >= 0 else len(text)
            spans.append((at, end))
            at = text.find("<!--", end)
    has_box = "\\boxed" in text or "\\fbox" in text
    if has_box and ('"' in text or "`" in text or "“" in text):
        spans.extend(m.span() for m in _QUOTED.finditer(text) if "\\boxed" in m.group() or "\\fbox" in m.group())
    if has_box and ("==" in text or "!=" in text or "True" in text or "False" in text):
        for start, end, _ in box_spans(text)[-64:]:  # the answer is at the end; a spray is rejected anyway
            line_end = text.find("\n", end)
            rest = text[end:line_end if 0 <= line_end < end + 300 else end + 300]
            if (_CLAIM_AFTER.match(rest) or _CLAIM_BEFORE.search(text, max(0, start - 12), start)
                    or _CLAIM_TRUTH.search(rest)):
                spans.append((start, end))
    if not spans:
        return text
    spans.sort()
    out, pos = [], 0
    for a, b in spans:
        a = max(a, pos)
        if b <= a:
            continue
        out.append(text[pos:a])
        seg = text[a:b]
        out.append(" " * len(seg) if "\n" not in seg else "\n".join(" " * len(x) for x in seg.split("\n")))
        pos = b
    out.append(text[pos:])
    return "".join(out)


# Where a text stops mid-sentence: a word no sentence ends on, a comma or an operator at its very end ("... so the
# total is 3 more than the", "3 + 4 =") means it did not finish; "3,500 apples in all", a period, a bracket, $ or a
# digit does not.
_UNFINISHED_END = re.compile(
    r"(?:(?<![A-Za-z])(?:the|a|an|of|to|and|or|is|are|was|were|be|by|with|for|from|than|then|so|that|which|we|get|"
    r"gets|gives|equals|into|onto|on|at|as|our|its|their|this|these|if|because|since|but|thus|hence|therefore|"
    r"plus|minus|times|over|divided|multiplied|let|where|when|while|has|have|had|can|will|would|must|should)|"
    r"[,;:+\-*/=^_({\[&]|\\[A-Za-z]*)\s*$", re.I)


_FUNCTION_WORD = re.compile(r"(?<![A-Za-z])(?:and|then|so|but|which|that|we|if|because|since|to)(?![A-Za-z])", re.I)


def _unfinished(text: str) -> bool:
    tail = text[-200:].rstrip()
    if not tail:
        return False
    if _UNFINISHED_END.search(tail):
        return True
    # A sentence that went on past its last number ("12 times 3 is 36, and then we subtract") and stopped on a
    # word: cut. A number followed only by what it counts ("3,500 apples in all") is a finished answer.
    if tail[-1].isalpha():
        after = re.split(r"\d", tail)[-1]
        return len(after) < len(tail) and ("," in after or bool(_FUNCTION_WORD.search(after)))
    return False


def final_answer(completion: str, finish_reason: str | None = None) -> tuple[list[str], bool] | None:
    """(the items of the final answer, hedged?) or None when the completion commits to no answer. Usually one
    item; several when several boxes together state it (final_boxes).

    finish_reason: the sampler's ("stop" / "length"), where known. A completion cut by the length limit never
    falls back to its last number or math block, and its marked answer counts only if the text went on after it;
    with no finish_reason, text that stops mid-sentence ("... and then the") is read as cut too."""
    if not isinstance(completion, str):
        return None
    text = prose(answer_region(completion))
    truncated = finish_reason == "length"
    boxes, hedge = final_boxes(text, stated=True)
    last_box = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    final = _marker(text, strong_only=True) if boxes else None
    if final is not None and final[0] > last_box and re.search(r"[\d$\\]", final[1]):
        # "\boxed{200} ... \boxed{255} ... Final Answer: The final answer is $10,455$": boxes before a later
        # explicit final answer were intermediate results; the marked answer is the one committed to.
        c = _marked_answer(final[1])
        if c:
            return [c], False
    if boxes:
        if any(b is None or not clean(b) for b in boxes):
            return None  # an empty or unterminated box never counts
        cands = [clean(b) for b in boxes]
        if any(len(c) > _MAX_ANSWER for c in cands):
            return None
        return cands, hedge
    marked = _marker(text)
    if marked is not None:
        if truncated and not text[marked[0]:].rstrip().endswith((".", "!", "。", "$", "\\]", "\\)")) \
                and "\n" not in text[marked[0]:].strip():
            return None  # "The answer is 1" cut by the length limit may have been "The answer is 150"
        c = _marked_answer(marked[1])
        if not c:
            return None
        # "The answer is 18. ... The answer is 20." with no retraction between: two final answers, a hedge.
        line_start = text.rfind("\n", 0, marked[0])
        prev = _marker(text, strong_only=True, end=line_start) if line_start > 0 else None
        if prev is not None and not _RETRACT.search(text, prev[0], marked[0]):
            pc = _marked_answer(prev[1])
            if pc and pc != c:
                return [pc, c], True
        return [c], False
    if truncated or (finish_reason is None and _unfinished(text)):
        return None  # no final-answer fallback into text that did not finish
    bare = text.strip()
    if bare and "\n" not in bare and len(bare) <= 40 and len(bare.split()) <= 3 and not _math_blocks(bare):
        return ([clean(bare)], False) if clean(bare) else None
    letter = _prose_letter(text)
    if letter:
        return [letter], False
    last = _last_math_or_number(text)
    return ([last], False) if last else None


# A choice letter stated in prose ("The correct option is (B).", "..., therefore B."): in the last sentence, not
# negated ("not A"), and only when that sentence holds no number (a number there is the answer).
_LETTER = re.compile(r"(?<![A-Za-z\\])(not\s+(?:option\s+|choice\s+)?)?(?:\(([A-E])\)|(?:option|choice)\s+\(?([A-E])\)?(?![A-Za-z])|"
                     r"(?:therefore|thus|hence|so|is|choose|select|pick|answer)[:,]?\s+\(?([A-E])\)?(?=\s*[.!]?\s*$|[.,;!]\s))",
                     re.I)


def _prose_letter(text: str) -> str | None:
    tail = text[-400:].rstrip()
    cut = max(tail.rfind(". ", 0, len(tail) - 2), tail.rfind("\n", 0, len(tail) - 2))
    sentence = tail[cut + 1:] if cut >= 0 else tail
    if re.search(r"\d", sentence):
        return None
    found = None
    for m in _LETTER.finditer(sentence):
        letter = m.group(2) or m.group(3) or m.group(4)
        if letter and not m.group(1) and letter.isupper():
            found = letter
    return found


def extract_candidates(completion: str, finish_reason: str | None = None) -> list[str] | None:
    """The items of the completion's final answer (usually one), cleaned; None when it commits to none."""
    found = final_answer(completion, finish_reason)
    return found[0] if found else None


# Display math may span lines; inline $..$ and \(..\) may not.
_MATH_BLOCK = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$([^$\n]+?)(?<!\\)\$", re.S)

class _Block:
    """What _MATH_BLOCK.finditer yielded, for the callers: start(), end(), groups() (one body, the others None)."""

    __slots__ = ("_start", "_end", "_alt", "_body")

    def __init__(self, start: int, end: int, alt: int, body: str):
        self._start, self._end, self._alt, self._body = start, end, alt, body

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def groups(self) -> tuple:
        return tuple(self._body if i == self._alt else None for i in range(4))


_DELIM = re.compile(r"[$\\]")
_CLOSE = {"$$": ("$$", 0), "\\[": ("\\]", 1), "\\(": ("\\)", 2)}


def _math_blocks(text: str) -> list[_Block]:
    """_MATH_BLOCK.finditer(text) in linear time. The regex looked for the closing delimiter again at every
    opening one: 20 kB of unclosed "\\[" cost the trainer 3 s. Here each delimiter's next position is looked up
    once and reused until the scan passes it."""
    found: list[_Block] = []
    nxt: dict[str, tuple[int, int]] = {}

    def find(delim: str, at: int) -> int:
        known = nxt.get(delim)
        if known is None or known[0] > at or 0 <= known[1] < at:
            known = (at, text.find(delim, at))
            nxt[delim] = known
        return known[1]

    n = len(text)
    m = _DELIM.search(text)
    while m is not None:
        i = m.start()
        block = None
        close = _CLOSE.get(text[i:i + 2])
        if close is not None:
            j = find(close[0], i + 3)  # the body is at least one character
            if j >= 0:
                block = _Block(i, j + 2, close[1], text[i + 2:j])
        if block is None and text[i] == "$" and (i == 0 or text[i - 1] not in "\\$"):
            dollar, newline = find("$", i + 1), find("\n", i + 1)
            j = dollar if newline < 0 or 0 <= dollar < newline else -1
            if j > i + 1 and text[j - 1] != "\\":
                block = _Block(i, j + 1, 3, text[i + 1:j])
        if block is None:
            m = _DELIM.search(text, i + 1)
            continue
        found.append(block)
        m = _DELIM.search(text, block.end()) if block.end() < n else None
    return found


_INLINE_MULTILINE = re.compile(r"(?<![\\$])\$((?=[^$]*[\\{^])[^$]{0,300}?\n[^$]{0,300}?)(?<!\\)\$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _last_math_or_number(text: str) -> str | None:
    """Fallback for prose without a box or marker: its last math block (with the blocks joined to it by list
    words: "the solutions are $1$ and $2$" -> "1, 2"), else its last number."""
    tail = text[-20_000:]  # the answer is at the end; bounds the scan on huge outputs
    blocks = _math_blocks(tail)
    # Inline math broken over lines ("$\\frac{1}{\n2}$"), after the last one-line block; only LaTeX-looking
    # text counts, so "$5 and\nthen $6" stays two prices.
    split = _INLINE_MULTILINE.search(tail, blocks[-1].end() if blocks else 0)
    if split is not None:
        last_split = None
        while split is not None:
            last_split, split = split, _INLINE_MULTILINE.search(tail, split.end())
        body = clean(last_split.group(1).replace("\n", " "))
        if body:
            return body
    if blocks:
        group = [blocks[-1]]
        for prev in reversed(blocks[:-1]):
            if len(group) >= 50 or _gap_kind(tail[prev.end():group[0].start()]) not in ("list", "ellipsis"):
                break
            group.insert(0, prev)
        bodies = [clean(next(g for g in m.groups() if g is not None)) for m in group]
        labels = {b.split("=", 1)[0].strip() for b in bodies if "=" in b}
        if len(bodies) > 1 and (len(labels) > 1 or (labels and len(labels) == 1 and not all("=" in b for b in bodies))):
            bodies = bodies[-1:]  # "$x=1$ and $y=2$": different quantities, the last one is the answer
        bodies = [b for b in bodies if b]
        if bodies:
            return ", ".join(bodies)
    nums = _NUMBER.findall(tail)
    return nums[-1].rstrip(",") if nums else None


def extract_answer(completion: str, finish_reason: str | None = None) -> str | None:
    """The final answer of a completion (its final box(es) or marked answer), or None when it gives none;
    several boxes that together state the answer come back as one list "a, b"."""
    cands = extract_candidates(completion, finish_reason)
    return ", ".join(cands) if cands else None


def gold_items(gold: str) -> list[str] | None:
    """A reference answer as datasets store it: GSM8K's rationale + '#### N', a solution with its answer
    boxed (the boxes final_boxes joins are all of it: "$\boxed{1}$ and $\boxed{-2}$"), or the bare answer.
    None when it holds no answer."""
    if not isinstance(gold, str):
        gold = str(gold)
    if "####" in gold:
        gold = gold[gold.rfind("####") + 4:]
    elif "\\boxed" in gold or "\\fbox" in gold:
        boxes = [clean(b) for b in final_boxes(gold)[0] if b and clean(b)]
        if boxes:
            return boxes
    g = clean(gold)
    return [g] if g else None


def gold_answer(gold: str) -> str | None:
    """The reference answer as one string (several boxed items joined as a list)."""
    items = gold_items(gold)
    return ", ".join(items) if items else None
