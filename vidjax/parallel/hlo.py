"""Collectives of a compiled XLA program, read from its HLO text, with bytes per step.

``collectives(compiled.as_text())`` lists every all-to-all, all-gather, all-reduce,
reduce-scatter and collective-permute with the computation it sits in, how many times it runs
per call (``while`` bodies count ``known_trip_count`` times, so a scanned stack of blocks counts
once per block) and its bytes:

- ``bytes``: size of the op's result on one device (for a tuple-form op, the sum of the tuple);
- ``wire_bytes``: an estimate of what one device sends, from the group size ``n``:
  all-to-all and all-gather ``(n-1)/n`` of the result, all-reduce ``2(n-1)/n`` (ring
  reduce-scatter + all-gather), reduce-scatter ``(n-1)`` × result, collective-permute the result.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
KINDS = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e\d+m\d+(?:fn)?)?)\[([0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of KINDS
    name: str  # instruction name
    computation: str
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype, dims) of the result arrays
    group_size: int  # devices per replica group (collective-permute: source-target pairs)
    count: int  # executions per call of the program
    op_name: str = ""  # the JAX operation it came from (HLO metadata), e.g. ".../shard_map/all_to_all"

    @property
    def bytes(self) -> int:
        total = 0
        for dtype, dims in self.shapes:
            n = DTYPE_BYTES.get(dtype, 4)
            for d in dims:
                n *= d
            total += n
        return total

    @property
    def moves_data(self) -> bool:
        """False for a collective over one-device groups (XLA keeps some, e.g. an all-reduce over a mesh axis of
        size 1): it is in the program but sends nothing."""
        return self.group_size > 1

    @property
    def wire_bytes(self) -> float:
        n, b = max(self.group_size, 1), self.bytes
        if self.kind in ("all-to-all", "all-gather"):
            return b * (n - 1) / n
        if self.kind == "all-reduce":
            return 2 * b * (n - 1) / n
        if self.kind == "reduce-scatter":
            return b * (n - 1)
        return float(b)


def _split_type(rest: str) -> tuple[str, str]:
    """'(f32[2], s32[]) all-to-all(...)' -> ('(f32[2], s32[])', 'all-to-all(...)')."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].strip()
    head, _, tail = rest.partition(" ")
    return head, tail.strip()


def _group_size(attrs: str) -> int:
    m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attrs)  # mesh['axis_0'=2,...] {'axis_1'}
    if m:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        n = 1
        for axis in re.findall(r"'([^']+)'", m.group(2)):
            n *= sizes.get(axis, 1)
        return n
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
    if m:
        return len([x for x in m.group(1).split(",") if x])
    m = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
    if m:
        return len(re.findall(r"\{", m.group(1)))
    return 1


def parse(text: str) -> tuple[dict[str, list[tuple[str, str, str, str]]], str]:
    """{computation: [(name, type, opcode, rest-of-line)]} and the ENTRY computation's name."""
    comps: dict[str, list[tuple[str, str, str, str]]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and "=" not in line.split("(")[0]:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        typ, rest = _split_type(m.group(2))
        op = re.match(r"([a-z][a-z0-9\-]*)", rest)
        if op:
            comps[current].append((m.group(1), typ, op.group(1), rest))
    return comps, entry


def _callees(rest: str) -> list[tuple[str, int]]:
    """Computations called by one instruction, with how many times per execution."""
    out = []
    trip = re.search(r'known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"', rest)
    n = int(trip.group(1)) if trip else 1
    for key in ("body", "condition"):
        m = re.search(rf"\b{key}=%?([\w.\-]+)", rest)
        if m:
            out.append((m.group(1), n))
    for key in ("to_apply", "calls", "async_computation"):
        m = re.search(rf"\b{key}=%?([\w.\-]+)", rest)
        if m:
            out.append((m.group(1), 1))
    m = re.search(r"branch_computations=\{([^}]*)\}", rest)
    if m:
        out += [(c.strip().lstrip("%"), 1) for c in m.group(1).split(",") if c.strip()]
    for key in ("true_computation", "false_computation"):
        m = re.search(rf"\b{key}=%?([\w.\-]+)", rest)
        if m:
            out.append((m.group(1), 1))
    return out


def collectives(text: str) -> list[Collective]:
    """Every collective in the compiled HLO ``text`` with its per-call execution count."""
    comps, entry = parse(text)
    counts: Counter = Counter()

    def visit(comp: str, times: int, depth: int = 0) -> None:
        if comp not in comps or depth > 64:
            return
        counts[comp] += times
        for _, _, op, rest in comps[comp]:
            for callee, n in _callees(rest):
                if op in ("all-reduce", "reduce-scatter", "reduce", "reduce-window", "scatter", "sort", "map",
                          "select-and-scatter", "all-reduce-start"):
                    continue  # reduction lambdas, not program control flow
                visit(callee, times * n, depth + 1)

    visit(entry or next(iter(comps)), 1)
    out = []
    for comp, instrs in comps.items():
        if not counts[comp]:
            continue
        for name, typ, op, rest in instrs:
            kind = op[: -len("-start")] if op.endswith("-start") else op
            if kind not in KINDS:
                continue
            shapes = tuple((dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _ARRAY.findall(typ))
            if op.endswith("-start") and len(shapes) > 1:  # (operands..., results...): keep the largest
                shapes = (max(shapes, key=lambda s: _nbytes(s)),)
            op_name = re.search(r'op_name="([^"]*)"', rest)
            out.append(Collective(kind, name, comp, shapes, _group_size(rest), counts[comp],
                                  op_name.group(1) if op_name else ""))
    return out


def _nbytes(shape: tuple[str, tuple[int, ...]]) -> int:
    n = DTYPE_BYTES.get(shape[0], 4)
    for d in shape[1]:
        n *= d
    return n


def summary(colls: Iterable[Collective]) -> dict[str, dict[str, float]]:
    """{kind: {"ops": executions per call, "bytes": result bytes per call, "wire_bytes": estimate}}, over the
    collectives that move data (one-device groups left out)."""
    out: dict[str, dict[str, float]] = {}
    for c in colls:
        if not c.moves_data:
            continue
        row = out.setdefault(c.kind, {"ops": 0, "bytes": 0, "wire_bytes": 0.0})
        row["ops"] += c.count
        row["bytes"] += c.bytes * c.count
        row["wire_bytes"] += c.wire_bytes * c.count
    return out


def table(colls: Iterable[Collective]) -> str:
    """Readable listing, one collective per line, largest traffic first."""
    rows = sorted(colls, key=lambda c: -c.bytes * c.count)
    lines = [f"{'kind':<19} {'x/step':>6} {'group':>5} {'bytes/op':>12} {'bytes/step':>13}  result shape"]
    for c in rows:
        shape = " ".join(f"{dt}[{','.join(map(str, d))}]" for dt, d in c.shapes[:2]) + (" ..." if len(c.shapes) > 2
                                                                                         else "")
        lines.append(f"{c.kind:<19} {c.count:>6} {c.group_size:>5} {c.bytes:>12,} {c.bytes * c.count:>13,}  {shape}")
    return "\n".join(lines)


def moved_bytes(colls: Iterable[Collective], kind: str | None = None) -> int:
    """Result bytes per call of the collectives (of ``kind``) that move data."""
    return sum(c.bytes * c.count for c in colls if c.moves_data and (kind is None or c.kind == kind))


__all__ = ["Collective", "KINDS", "collectives", "moved_bytes", "parse", "summary", "table"]
