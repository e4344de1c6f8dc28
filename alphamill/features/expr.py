"""Qlib expression strings (``"Mean($close, 5)/$close"``) parsed and evaluated on a grid.

The parser accepts Qlib's expression syntax (``$field``, numbers, ``+ - * /``,
comparisons, ``&``/``|`` and operator calls) through Python's own ``ast`` module, but
evaluates only the nodes listed here, never arbitrary code. Many expressions are
evaluated together: identical sub-expressions are computed once and released as soon as
their last user has consumed them, so the 158 Alpha158 columns share their rolling
windows without keeping every intermediate array alive.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Callable

import numpy as np

from alphamill.errors import ConfigError
from alphamill.features import ops

Node = tuple

_FIELD_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.BitAnd: "&", ast.BitOr: "|"}
_CMPOPS = {ast.Gt: ">", ast.Lt: "<", ast.GtE: ">=", ast.LtE: "<=", ast.Eq: "==", ast.NotEq: "!="}

#: Operator name -> (number of series arguments, number of integer/float parameters).
OPERATORS: dict[str, tuple[int, int]] = {
    "Ref": (1, 1),
    "Mean": (1, 1),
    "Sum": (1, 1),
    "Std": (1, 1),
    "Var": (1, 1),
    "Max": (1, 1),
    "Min": (1, 1),
    "Quantile": (1, 2),
    "Rank": (1, 1),
    "IdxMax": (1, 1),
    "IdxMin": (1, 1),
    "Slope": (1, 1),
    "Rsquare": (1, 1),
    "Resi": (1, 1),
    "Corr": (2, 1),
    "Greater": (2, 0),
    "Less": (2, 0),
    "Abs": (1, 0),
    "Log": (1, 0),
}

_REGRESSION = ("Slope", "Rsquare", "Resi")


def parse(expr: str, where: str = "expression") -> Node:
    """Parse one Qlib expression into a hashable tree; ConfigError names what is wrong."""
    if not isinstance(expr, str) or not expr.strip():
        raise ConfigError(f"expected a non-empty Qlib expression string, got {expr!r}", where)
    src = _FIELD_RE.sub(lambda m: f"__field__{m.group(1)}", expr.strip())
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError as e:
        raise ConfigError(f"cannot parse expression {expr!r}: {e.msg}", where) from None
    return _convert(tree, expr, where)


def _convert(n: ast.AST, expr: str, where: str) -> Node:
    bad = ConfigError
    if isinstance(n, ast.Name):
        if n.id.startswith("__field__"):
            return ("field", n.id[len("__field__") :])
        raise bad(f"unknown name {n.id!r} in {expr!r} (fields are written $name)", where)
    if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
        return ("const", n.value)
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
        inner = _convert(n.operand, expr, where)
        if inner[0] == "const":
            return ("const", -inner[1])
        return ("neg", inner)
    if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
        return ("bin", _BINOPS[type(n.op)], _convert(n.left, expr, where), _convert(n.right, expr, where))
    if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _CMPOPS:
        return (
            "cmp",
            _CMPOPS[type(n.ops[0])],
            _convert(n.left, expr, where),
            _convert(n.comparators[0], expr, where),
        )
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and not n.keywords:
        name = n.func.id
        if name not in OPERATORS:
            raise bad(
                f"operator {name!r} in {expr!r} is not supported; supported: {', '.join(OPERATORS)}",
                where,
            )
        n_series, n_params = OPERATORS[name]
        if len(n.args) != n_series + n_params:
            raise bad(f"{name} expects {n_series + n_params} arguments in {expr!r}", where)
        args = [_convert(a, expr, where) for a in n.args]
        series, params = args[:n_series], args[n_series:]
        for i, s in enumerate(series):
            if s[0] == "const" and name not in ("Greater", "Less"):
                raise bad(f"argument {i + 1} of {name} must be an expression in {expr!r}", where)
        vals = []
        for p in params:
            if p[0] != "const":
                raise bad(f"the window/parameter of {name} must be a number in {expr!r}", where)
            vals.append(p[1])
        if name != "Quantile" and vals:
            if int(vals[0]) != vals[0]:
                raise bad(f"the window of {name} must be an integer in {expr!r}", where)
            vals[0] = int(vals[0])
            if name != "Ref" and vals[0] < 1:
                raise bad(f"the window of {name} must be >= 1 in {expr!r}", where)
            if name == "Ref" and vals[0] == 0:
                raise bad(f"Ref(x, 0) is not supported in {expr!r}", where)
        if name == "Quantile":
            if int(vals[0]) != vals[0] or vals[0] < 1 or not 0 <= vals[1] <= 1:
                raise bad(f"Quantile expects (x, N >= 1, 0 <= q <= 1) in {expr!r}", where)
            vals = [int(vals[0]), float(vals[1])]
        return ("call", name, tuple(series), tuple(vals))
    raise bad(f"unsupported syntax in {expr!r}", where)


def children(node: Node) -> tuple[Node, ...]:
    kind = node[0]
    if kind in ("bin", "cmp"):
        return (node[2], node[3])
    if kind == "neg":
        return (node[1],)
    if kind == "call":
        return node[2]
    return ()


def max_lookahead(node: Node) -> int:
    """Rows into the future an expression reads (from negative Refs)."""
    if node[0] == "call" and node[1] == "Ref":
        k = node[3][0]
        return max(0, -k) + max_lookahead(node[2][0])
    return max((max_lookahead(c) for c in children(node)), default=0)


class Evaluator:
    """Evaluate many expression trees on one grid, sharing common sub-expressions.

    ``fields`` maps field names (without ``$``) to float32 arrays of shape
    (instruments, days), NaN outside listing spans.
    """

    def __init__(self, fields: dict[str, np.ndarray], grid: ops.Grid):
        self.fields = fields
        self.grid = grid
        self._memo: dict[Node, np.ndarray] = {}
        self._refs: Counter = Counter()
        self._reg: dict[tuple[Node, int], ops.RegressionSums] = {}
        self._known: set[Node] = set()

    # -- planning ---------------------------------------------------------------
    def _plan(self, roots: list[Node]) -> None:
        """Count, for every node, how many consumers will ask for its value."""
        stack = list(roots)
        for r in roots:
            self._refs[r] += 1
        while stack:
            n = stack.pop()
            if n in self._known:
                continue
            self._known.add(n)
            for c in children(n):
                self._refs[c] += 1
                stack.append(c)

    def evaluate_many(self, roots: list[Node], sink: Callable[[int, np.ndarray], None]) -> None:
        """Evaluate ``roots`` in order and hand each result to ``sink(i, array)``."""
        self._plan(roots)
        for i, r in enumerate(roots):
            sink(i, self._take(r))
        self._memo.clear()
        self._reg.clear()
        self._refs.clear()
        self._known.clear()

    # -- memo -------------------------------------------------------------------
    def _take(self, node: Node):
        """Value of ``node`` for one consumer; released after its last consumer."""
        if node[0] == "const":
            return node[1]
        if node in self._memo:
            val = self._memo[node]
        else:
            val = self._compute(node)
        self._refs[node] -= 1
        if self._refs[node] > 0:
            self._memo[node] = val
        else:
            self._memo.pop(node, None)
        return val

    def _peek(self, node: Node) -> np.ndarray:
        """Value of ``node`` without consuming it (kept if someone else will need it)."""
        if node in self._memo:
            return self._memo[node]
        if self._refs[node] <= 0:  # nobody planned it: evaluate once for this caller
            self._plan([node])
            return self._take(node)
        val = self._compute(node)
        self._memo[node] = val
        return val

    # -- computation ------------------------------------------------------------
    def _compute(self, node: Node):
        kind = node[0]
        if kind == "field":
            name = node[1]
            if name not in self.fields:
                raise ConfigError(
                    f"unknown field ${name}; available: "
                    + ", ".join("$" + f for f in sorted(self.fields)),
                    "expression",
                )
            return self.fields[name]
        if kind == "neg":
            return -self._take(node[1])
        if kind in ("bin", "cmp"):
            a = self._take(node[2])
            b = self._take(node[3])
            return _binary(node[1], a, b)
        return self._call(node)

    def _call(self, node: Node):
        name, series, params = node[1], node[2], node[3]
        g = self.grid
        if name == "Quantile":
            return self._quantile(node)
        if name in _REGRESSION:
            return self._regression(node)
        if name == "Corr":
            w = params[0]
            stds = []
            for sr in series:  # reuse a planned Std of the same window for the mask
                key = ("call", "Std", (sr,), (w,))
                stds.append(self._peek(key) if self._refs[key] > 0 else None)
            std_a, std_b = stds
            a = self._take(series[0])
            b = self._take(series[1])
            return ops.rolling_corr(_arr(a, g), _arr(b, g), w, g, std_a, std_b)
        if name in ("Greater", "Less"):
            a = self._take(series[0])
            b = self._take(series[1])
            fn = ops.greater if name == "Greater" else ops.less
            return fn(a, b)
        x = self._take(series[0])
        if name == "Abs":
            return ops.abs_(x)
        if name == "Log":
            return ops.log(_arr(x, g))
        w = params[0]
        x = _arr(x, g)
        if name == "Ref":
            return ops.ref(x, w)
        fn = {
            "Mean": ops.rolling_mean,
            "Sum": ops.rolling_sum,
            "Std": ops.rolling_std,
            "Var": ops.rolling_var,
            "Max": ops.rolling_max,
            "Min": ops.rolling_min,
            "Rank": ops.rolling_rank,
            "IdxMax": ops.rolling_idxmax,
            "IdxMin": ops.rolling_idxmin,
        }[name]
        return fn(x, w, g)

    def _quantile(self, node: Node) -> np.ndarray:
        """All pending quantiles of the same series and window come from one sort."""
        series, (w, q) = node[2], node[3]
        siblings = [
            n
            for n, c in self._refs.items()
            if c > 0
            and n[0] == "call"
            and n[1] == "Quantile"
            and n[2] == series
            and n[3][0] == w
            and n != node
            and n not in self._memo
        ]
        x = _arr(self._take(series[0]), self.grid)
        qs = [q] + [s[3][1] for s in siblings]
        outs = ops.rolling_quantiles(x, w, qs, self.grid)
        for s, o in zip(siblings, outs[1:], strict=True):
            self._memo[s] = o
            # the sibling's own evaluation will consume its series argument again
            self._refs[series[0]] -= 1
            if self._refs[series[0]] <= 0:
                self._memo.pop(series[0], None)
        return outs[0]

    def _regression(self, node: Node) -> np.ndarray:
        """Slope/Rsquare/Resi of one series share a single running-sum pass over all the
        windows still pending for it."""
        name, series, (w,) = node[1], node[2], node[3]
        x_node = series[0]
        key = (x_node, w)
        if key not in self._reg:
            windows = sorted(
                {
                    n[3][0]
                    for n, c in self._refs.items()
                    if c > 0 and n[0] == "call" and n[1] in _REGRESSION and n[2] == series
                }
                | {w}
            )
            x = _arr(self._peek(x_node), self.grid)
            for win, sums in ops.regression_sums(x, windows).items():
                self._reg.setdefault((x_node, win), sums)
        sums = self._reg[key]
        std = self._peek(("call", "Std", series, (w,))) if name == "Rsquare" else None
        x = _arr(self._take(x_node), self.grid)
        if name == "Slope":
            out = ops.slope_from(sums)
        elif name == "Resi":
            out = ops.resi_from(sums, x)
        else:
            out = ops.rsquare_from(sums, std)
        pending = any(
            c > 0
            and n != node
            and n not in self._memo
            and n[0] == "call"
            and n[1] in _REGRESSION
            and n[2] == series
            and n[3][0] == w
            for n, c in self._refs.items()
        )
        if not pending:
            self._reg.pop(key, None)
        return out


def _arr(x, grid: ops.Grid) -> np.ndarray:
    """Broadcast a constant argument to the grid (float32, NaN outside spans)."""
    if isinstance(x, np.ndarray):
        return x
    out = np.full(grid.inside.shape, np.float32(x), dtype=np.float32)
    out[~grid.inside] = np.nan
    return out


def _binary(op: str, a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if op == "+":
            return np.add(a, b)
        if op == "-":
            return np.subtract(a, b)
        if op == "*":
            return np.multiply(a, b)
        if op == "/":
            return np.true_divide(a, b)
        if op == "&":
            return np.logical_and(a, b)
        if op == "|":
            return np.logical_or(a, b)
        if op == ">":
            return np.greater(a, b)
        if op == "<":
            return np.less(a, b)
        if op == ">=":
            return np.greater_equal(a, b)
        if op == "<=":
            return np.less_equal(a, b)
        if op == "==":
            return np.equal(a, b)
        if op == "!=":
            return np.not_equal(a, b)
    raise ConfigError(f"unsupported operator {op!r}", "expression")
