"""Turn a row's tests into sandbox runs: what may enter the sandbox (the program, setup, inputs, the untrusted
sub-expressions of each assert) and, kept here, what may not (expected outputs and every comparison).

For `assert f(2) == 4` the sandbox evaluates only `f(2)`; the parent decides `value == 4`. Loops over literal
cases are unrolled into one assert per case, one-line helpers (`def close(a, b): return abs(a - b) < 1e-6`) are
inlined, and names bound to literals (`expected = 5`) are judged from the parent's copy, so expectations stay out.

What cannot be split that way (a loop over computed values: a "check" op; a probe expression that uses names the
test code binds: a "jeval" op) is judged inside the sandbox but outside the program's process: such a run is
marked `judge`, and a clean judge process runs all of its test code, calling into the program's process only for
the program's own functions, with plain values both ways (see judge_worker in _inside.py).
"""

from __future__ import annotations

import ast
import builtins
import copy
import json
from dataclasses import dataclass, field
from typing import Any

from rewards.errors import UserError
from rewards.sandbox.operators import BINOPS, CMPOPS, SAFE_CALLS, SAFE_NAMES, UNOPS


@dataclass
class Test:
    kind: str  # "stdin" | "call" | "assert" | "check"
    run: int  # id of the run that answers it
    expected: Any = None  # stdin: expected text; call: expected value; assert: a judge tree
    probe: int | None = None


@dataclass
class Plan:
    runs: list[dict] = field(default_factory=list)
    tests: list[Test] = field(default_factory=list)


# ------------------------------------------------------------------ reading the tests column

def load_tests(tests: Any) -> dict | None:
    if tests is None:
        return None
    if isinstance(tests, str):
        if not tests.strip():
            return None
        try:
            tests = json.loads(tests)
        except ValueError as exc:
            if tests.lstrip().startswith(("assert", "def check", "import", "from")):
                return {"asserts": tests}  # a bare test-code column (MBPP / HumanEval style)
            raise UserError(f"code reward: tests {tests[:80]!r} is not JSON ({exc}); rule: a dict or a JSON object "
                            "string per row; fix: see the tests format in the README") from exc
    if isinstance(tests, dict) and isinstance(tests.get("input_output"), str):  # the raw APPS column
        tests = {**json.loads(tests["input_output"]), **{k: v for k, v in tests.items() if k != "input_output"}}
    if not isinstance(tests, dict):
        raise UserError(f"code reward: tests must be a dict, got {type(tests).__name__}; fix: see the tests format")
    # A datasets struct column gives every row every key, None where the row has none.
    tests = {k: v for k, v in tests.items() if v is not None}
    return tests or None


ASSERT_KEYS = ("asserts", "assert", "test_list", "tests", "test")
SETUP_KEYS = ("setup", "test_setup_code", "test_imports", "imports")


def plan_tests(tests: dict, test_wall_s: float) -> Plan:
    plan = Plan()
    if "inputs" in tests:
        inputs, outputs = tests["inputs"], tests.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise UserError("code reward: 'inputs' and 'outputs' must be lists of the same length; fix the row")
        fn_name = tests.get("fn_name")
        if fn_name:
            ops = []
            for k, (args, want) in enumerate(zip(inputs, outputs)):
                if isinstance(args, str):
                    args = _json_args(args)
                ops.append(["call", k, str(fn_name), args if isinstance(args, list) else [args]])
                plan.tests.append(Test("call", 0, want, k))
            plan.runs.append(_probe_run(0, _setup_ops(tests) + ops, len(ops), test_wall_s))
        else:
            for k, (stdin, want) in enumerate(zip(inputs, outputs)):
                want = _text(want)
                # A right answer must never hit the output cap: allow twice the expected size, whatever the cap.
                plan.runs.append({"id": k, "kind": "stdin", "stdin": _text(stdin), "out_bytes_min": 2 * len(want)})
                plan.tests.append(Test("stdin", k, want))
        return plan
    code = next((tests[k] for k in ASSERT_KEYS if k in tests), None)
    if code is None:
        raise UserError(f"code reward: tests has none of inputs/outputs or {', '.join(ASSERT_KEYS)} "
                        f"(keys: {sorted(tests)}); fix: see the tests format in the README")
    if isinstance(code, list):
        code = "\n".join(code)
    # Setup runs through the same planner, so its helpers and constants are known to the judge.
    setup = "\n".join(op[2] for op in _setup_ops(tests))
    ops: list = []
    _compile_asserts(setup + "\n" + str(code), tests.get("entry_point"), ops, plan)
    plan.runs.append(_route(_probe_run(0, ops, len(plan.tests), test_wall_s)))
    return plan


def _json_args(text: str) -> list:
    """One JSON value holding the argument list (APPS), or one JSON value per line (LiveCodeBench)."""
    try:
        return json.loads(text)
    except ValueError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise UserError(f"code reward: call arguments {text[:80]!r} are not JSON ({exc}); fix the dataset row") from exc


def _text(x: Any) -> str:
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def _setup_ops(tests: dict) -> list:
    ops = []
    for key in SETUP_KEYS:
        value = tests.get(key)
        if value:
            ops.append(["exec", -1, "\n".join(value) if isinstance(value, list) else str(value)])
    return ops


def _probe_run(run_id: int, ops: list, n_probes: int, test_wall_s: float) -> dict:
    budget = test_wall_s * max(1, n_probes) + 1.0
    return {"id": run_id, "kind": "probes", "ops": ops, "wall_s": budget, "cpu_s": budget}


def _compile_asserts(code: str, entry_point: str | None, ops: list, plan: Plan) -> None:
    try:
        module = ast.parse(code)
    except SyntaxError as exc:
        raise UserError(f"code reward: the tests code does not parse ({exc}); fix the dataset row") from exc
    ctx = _Ctx(ops, plan)
    check_body = None
    for stmt in module.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "check" and stmt.args.args:
            check_body = stmt  # HumanEval style: inlined below with `candidate` bound to the function under test
            continue
        call = stmt.value if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) else None
        if check_body and call and isinstance(call.func, ast.Name) and call.func.id == "check" and call.args:
            _inline_check(check_body, ast.unparse(call.args[0]), ctx)
            check_body = None
            continue
        _statement(stmt, ctx)
    if check_body is not None and entry_point:
        _inline_check(check_body, str(entry_point), ctx)
    ctx.drop_unused_literals()


class _Ctx:
    """What the planner knows while walking the test code: probes so far, names bound to literals, and helpers
    small enough (`def h(a, b): return <expr>`) to be judged in the parent like the assert that calls them."""

    def __init__(self, ops: list, plan: Plan):
        self.ops, self.plan = ops, plan
        self.literals: dict[str, Any] = {}
        self.helpers: dict[str, tuple[list[str], ast.expr]] = {}
        self.literal_ops: list[tuple[int, str]] = []  # (op index, name) of `name = <literal>` setup statements

    def drop_unused_literals(self) -> None:
        """`expected = 5` then `assert f(1) == expected`: the parent judges with 5, so the sandbox need not (and
        must not) see it. Keep such an assignment only if a later sandbox op reads the name."""
        drop = set()
        for index, name in self.literal_ops:
            later = "\n".join(op[2] for op in self.ops[index + 1:] if len(op) > 2 and isinstance(op[2], str))
            try:
                used = any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(ast.parse(later)))
            except SyntaxError:
                used = True
            if not used:
                drop.add(index)
        self.ops[:] = [op for i, op in enumerate(self.ops) if i not in drop]


def _inline_check(fn: ast.FunctionDef, target: str, ctx: _Ctx) -> None:
    """HumanEval's `def check(candidate)`: its body, with `candidate` read as the program's function. Written as that
    function's own name where possible, so `candidate(3)` is a probe over the program's names alone."""
    param = fn.args.args[0].arg
    ctx.literals.pop(param, None)
    body = fn.body
    rebinds = any(isinstance(n, ast.Name) and n.id == param and not isinstance(n.ctx, ast.Load)
                  for stmt in body for n in ast.walk(stmt))
    if target.isidentifier() and not rebinds and target not in BUILTIN_NAMES:
        body = [_Substitute({param: ast.Name(target, ast.Load())}).visit(copy.deepcopy(stmt)) for stmt in body]
        body = [ast.fix_missing_locations(stmt) for stmt in body]
    elif target.isidentifier():
        # A name the builtins also have (a task whose function is `filter`): bound to the program's, never the builtin.
        ctx.ops.append(["bind", -1, param, target])
    else:
        ctx.ops.append(["exec", -1, f"{param} = {target}"])
    for stmt in body:
        _statement(stmt, ctx)


MAX_UNROLL = 2000


def _statement(stmt: ast.stmt, ctx: _Ctx) -> None:
    if isinstance(stmt, ast.Assert):
        ctx.plan.tests.append(Test("assert", 0, _judge_tree(stmt.test, ctx)))
        return
    if isinstance(stmt, ast.For) and not stmt.orelse and _unroll(stmt, ctx):
        return
    if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)) and not isinstance(stmt, ast.FunctionDef):
        # An assert the planner cannot split (inside a while, an if, a loop over computed values) runs in the
        # sandbox and counts only if the whole statement completes: weaker, prefer top-level asserts in datasets.
        k = _next_probe(ctx.ops)
        ctx.ops.append(["check", k, ast.unparse(stmt)])
        ctx.plan.tests.append(Test("check", 0, None, k))
        return
    _remember(stmt, ctx)
    ctx.ops.append(["exec", -1, ast.unparse(stmt)])


def _remember(stmt: ast.stmt, ctx: _Ctx) -> None:
    for node in ast.walk(stmt):  # a statement that rebinds, or may mutate, a name: forget what we knew of it
        if isinstance(node, ast.Name):
            ctx.literals.pop(node.id, None)
            if isinstance(node.ctx, ast.Store):
                ctx.helpers.pop(node.id, None)
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        try:
            ctx.literals[stmt.targets[0].id] = _static(stmt.value, ctx)
            ctx.literal_ops.append((len(ctx.ops), stmt.targets[0].id))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError):
            pass
    if isinstance(stmt, ast.FunctionDef):
        ctx.literals.pop(stmt.name, None)
        body = [b for b in stmt.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
        a = stmt.args
        if (len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None and not a.vararg
                and not a.kwarg and not a.kwonlyargs and not a.defaults and not a.posonlyargs):
            ctx.helpers[stmt.name] = ([x.arg for x in a.args], body[0].value)
        else:
            ctx.helpers.pop(stmt.name, None)


def _static(node: ast.expr, ctx: _Ctx) -> Any:
    """Values the test code fixes by itself (literals, names bound to them, zip/range/enumerate of those)."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        pass
    if isinstance(node, ast.Name) and node.id in ctx.literals:
        return ctx.literals[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords and not any(
            isinstance(a, ast.Starred) for a in node.args):
        fn = {"zip": zip, "range": range, "enumerate": enumerate, "list": list, "tuple": tuple,
              "reversed": reversed, "sorted": sorted}.get(node.func.id)
        if fn is not None:
            args = [_static(a, ctx) for a in node.args]
            if fn is range and any(abs(a) > 10 * MAX_UNROLL for a in args if isinstance(a, int)):
                raise ValueError("range too long")
            return list(fn(*args))
    raise ValueError("not static")


def _as_node(value: Any) -> ast.expr:
    text = repr(value)
    if ast.literal_eval(text) != value or len(text) > 100_000:
        raise ValueError("no literal form")
    return ast.parse(text, mode="eval").body


def _bind(target: ast.expr, value: Any, out: dict[str, ast.expr]) -> None:
    if isinstance(target, ast.Name):
        out[target.id] = _as_node(value)
    elif isinstance(target, (ast.Tuple, ast.List)) and not any(isinstance(e, ast.Starred) for e in target.elts):
        items = list(value)
        if len(items) != len(target.elts):
            raise ValueError("unpack mismatch")
        for t, v in zip(target.elts, items):
            _bind(t, v, out)
    else:
        raise ValueError("unsupported loop target")


class _Substitute(ast.NodeTransformer):
    def __init__(self, names: dict[str, ast.expr]):
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if isinstance(node.ctx, ast.Load) and node.id in self.names:
            return copy.deepcopy(self.names[node.id])
        return node


def _unroll(loop: ast.For, ctx: _Ctx) -> bool:
    """`for x, want in <static>: assert f(x) == want` becomes one top-level assert per item, so each is judged in
    the parent and `want` never enters the sandbox. Only loops whose bodies are asserts (or such loops)."""
    if not all(isinstance(b, (ast.Assert, ast.For)) for b in loop.body):
        return False
    try:
        items = _static(loop.iter, ctx)
        if len(items) > MAX_UNROLL:
            return False
        bodies = []
        for item in items:
            names: dict[str, ast.expr] = {}
            _bind(loop.target, item, names)
            bodies.append([_Substitute(names).visit(copy.deepcopy(b)) for b in loop.body])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError):
        return False
    for body in bodies:
        for stmt in body:
            _statement(ast.fix_missing_locations(stmt), ctx)
    return True


BUILTIN_NAMES = frozenset(dir(builtins))
JUDGED = ("check", "jeval")


def _route(run: dict) -> dict:
    """Mark the ops the program's process must not answer, and give such a run what its judge process needs.

    A probe expression that reads a name the test code binds (an import, a helper, a variable), or applies a builtin
    to what the program returns (`isinstance(f(2), int)`), would run test code in the program's process, where the
    program can patch it: it becomes "jeval", evaluated by the judge process. A probe that is the program's function
    applied to inputs stays "eval": its value is the program's to choose anyway."""
    ops = run["ops"]
    bound = set()
    for op in ops:
        if op[0] in ("exec", "check"):
            bound |= _bound_names(op[2])
        elif op[0] == "bind":
            bound.add(op[2])
    for op in ops:
        if op[0] == "eval" and _judges(op[2], bound):
            op[0] = "jeval"
    if any(op[0] in JUDGED for op in ops):
        run["judge"] = True
        used = set()
        for op in ops:
            if op[0] in ("exec", "check", "jeval"):
                used |= _names(op[2])
            elif op[0] == "bind":
                used.add(op[3])
        run["names"] = sorted(used - BUILTIN_NAMES | {op[3] for op in ops if op[0] == "bind"})
        # The test's imports also run in the program's process: an honest program may lean on them (MBPP's
        # test_imports), and an import decides nothing.
        run["p_setup"] = [op[2] for op in ops if op[0] == "exec" and _imports_only(op[2])]
    return run


def _parse(text: str) -> ast.AST | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _names(text: str) -> set[str]:
    tree = _parse(text)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} if tree is not None else set()


def _judges(text: str, bound: set[str]) -> bool:
    """Whether a probe expression does more than call the program: it reads a test-bound name anywhere, or a builtin
    outside the arguments of a call into the program (`f(list(range(3)))` builds an input; `isinstance(f(2), int)`
    judges an output)."""
    tree = _parse(text)
    if tree is None:
        return True

    def rooted_in_program(node: ast.expr) -> bool:
        while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
            node = node.func if isinstance(node, ast.Call) else node.value
        return isinstance(node, ast.Name) and node.id not in bound and node.id not in BUILTIN_NAMES

    def mentions(node: ast.AST, names: set[str] | frozenset[str]) -> bool:
        return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))

    def visit(node: ast.AST) -> bool:
        if isinstance(node, ast.Call) and rooted_in_program(node.func):
            return visit(node.func) or any(mentions(a, bound) for a in [*node.args, *node.keywords])
        if isinstance(node, ast.Name):
            return node.id in bound or node.id in BUILTIN_NAMES
        return any(visit(child) for child in ast.iter_child_nodes(node))

    return visit(tree)


def _bound_names(text: str) -> set[str]:
    """Every name a statement may bind, at any depth (erring wide only sends more probes to the judge process)."""
    tree = _parse(text)
    out: set[str] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.alias):
            out.add(node.asname or node.name.partition(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            out.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            out.add(node.rest)
    return out


def _imports_only(text: str) -> bool:
    tree = _parse(text)
    return tree is not None and bool(tree.body) and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in tree.body)


def _next_probe(ops: list) -> int:
    return 1 + max((op[1] for op in ops), default=-1)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def _judge_tree(node: ast.expr, ctx: _Ctx, depth: int = 0) -> tuple:
    """The parts of an assert the parent can compute, with every other sub-expression a sandbox probe."""
    if depth > 50:
        raise UserError("code reward: an assert in the tests nests helpers too deeply; fix the dataset row")
    sub = lambda n: _judge_tree(n, ctx, depth + 1)  # noqa: E731
    try:
        return ("const", _static(node, ctx) if isinstance(node, ast.Name) else ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Compare) and all(type(op) in CMPOPS for op in node.ops):
        return ("cmp", [CMPOPS[type(op)] for op in node.ops], [sub(x) for x in [node.left, *node.comparators]])
    if isinstance(node, ast.BoolOp):
        return ("and" if isinstance(node.op, ast.And) else "or", [sub(v) for v in node.values])
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNOPS:
        return ("un", UNOPS[type(node.op)], sub(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        return ("bin", type(node.op), sub(node.left), sub(node.right))
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and not any(isinstance(e, ast.Starred) for e in node.elts):
        return ({ast.List: "list", ast.Tuple: "tuple", ast.Set: "set"}[type(node)], [sub(e) for e in node.elts])
    if _dotted(node) in SAFE_NAMES:
        return ("const", SAFE_NAMES[_dotted(node)])
    plain_call = isinstance(node, ast.Call) and not any(isinstance(a, ast.Starred) for a in node.args) and all(
        kw.arg for kw in node.keywords)
    if plain_call and _dotted(node.func) in SAFE_CALLS:
        return ("call", SAFE_CALLS[_dotted(node.func)], [sub(a) for a in node.args],
                {kw.arg: sub(kw.value) for kw in node.keywords})
    if plain_call and isinstance(node.func, ast.Name) and node.func.id in ctx.helpers and not node.keywords:
        params, body = ctx.helpers[node.func.id]
        if len(params) == len(node.args):
            return sub(_Substitute(dict(zip(params, node.args))).visit(copy.deepcopy(body)))
    k = _next_probe(ctx.ops)
    ctx.ops.append(["eval", k, ast.unparse(node)])
    return ("probe", k)


