"""What a compiled TPU program does per step, read from its optimized HLO text.

`collective_bytes(hlo_text, chips)`: bytes each chip sends per step through collectives, by
kind. A collective inside a loop counts once per trip (trip counts are read from the
loop's condition, `i < N`). Ring-algorithm traffic per chip, with n chips in the group:
  all-gather      (n-1)/n x the gathered result
  reduce-scatter  (n-1)/n x the input   (on TPU also the 'all-reduce-scatter' fusions)
  all-reduce      2(n-1)/n x the array
  all-to-all      (n-1)/n x the array;   collective-permute: the array

`matmul_flops(hlo_text)` and `splash_flops(hlo_text, block)`: FLOPs per step of the
program's matmuls (dots, convolutions) and of its splash attention kernels (Pallas custom
calls, counted from their shapes), recomputation included.

`largest_temporaries(dump_dir, module)`: the biggest temporary buffers of a compiled (or
failed: XLA writes the dump before it reports running out of HBM) program, from XLA's
buffer-assignment dump (`--xla_dump_to`), each with the jax operation that made it.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import pathlib
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_OPCODE_KIND = {
    "all-gather": "all-gather", "all-gather-start": "all-gather",
    "reduce-scatter": "reduce-scatter", "reduce-scatter-start": "reduce-scatter",
    "all-reduce": "all-reduce", "all-reduce-start": "all-reduce",
    "all-to-all": "all-to-all", "ragged-all-to-all": "all-to-all",
    "collective-permute": "collective-permute",
    "collective-permute-start": "collective-permute",
}
_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2,
          "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8,
          "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
_ARRAY_TYPE = re.compile(r"\b[a-z]+[0-9]*\[[0-9,]*\]")
_HEADER = re.compile(r"^(?:ENTRY )?%([^\s(]+) \((.*)\) -> .* \{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (.*)$")
_CALLEE = re.compile(r"\b(calls|body|condition|to_apply)=%([^\s,})]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def array_bytes(type_text: str) -> int:
  """Bytes of every array named in an HLO type such as `(bf16[8,128]{1,0}, f32[])`."""
  total = 0
  for dtype, dims in _ARRAY.findall(type_text):
    size = _BYTES.get(dtype, 1)  # fp8 variants and the like: one byte
    total += size * math.prod(int(d) for d in dims.split(",") if d)
  return total


@dataclasses.dataclass
class _Instr:
  name: str
  type_text: str
  opcode: str
  rest: str


@dataclasses.dataclass
class _Computation:
  name: str
  params_text: str
  instrs: list


def _split_type(text: str) -> tuple[str, str]:
  """`TYPE opcode(...)...` -> (TYPE, the rest); TYPE may be a nested tuple."""
  if not text.startswith("("):
    head, _, rest = text.partition(" ")
    return head, rest
  depth = 0
  for i, ch in enumerate(text):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return text[:i + 1], text[i + 1:].lstrip()
  return text, ""


def parse(hlo_text: str) -> tuple[dict, str]:
  """The module's computations by name, and the name of its entry computation."""
  comps, entry, current = {}, "", None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = _Computation(header.group(1), header.group(2), [])
      comps[current.name] = current
      entry = current.name if line.startswith("ENTRY") else entry
      continue
    if current is None:
      continue
    if line.rstrip() == "}":
      current = None
      continue
    instr = _INSTR.match(line)
    if instr:
      type_text, rest = _split_type(instr.group(2))
      opcode = rest.split("(", 1)[0].strip()
      current.instrs.append(_Instr(instr.group(1), type_text, opcode, rest))
    elif current.instrs:  # an attribute (a kernel's JSON config) that spans lines
      current.instrs[-1].rest += "\n" + line
  return comps, entry


def _constant(instr) -> int | None:
  m = re.match(r"constant\((-?\d+)\)", instr.rest) if instr and instr.opcode == "constant" else None
  return int(m.group(1)) if m else None


def _tuple_index(instr) -> int | None:
  m = re.search(r"\bindex=(\d+)", instr.rest) if instr and instr.opcode == "get-tuple-element" \
      else None
  return int(m.group(1)) if m else None


def _trip_count(comps: dict, loop, caller) -> int:
  """Trips of the while `loop` (in computation `caller`) whose condition is `i < N`, its
  body adding a constant step to i (XLA's windowed einsums step by 2) from an initial
  constant: ceil((N - init) / step); 1 if the loop is not of that form."""
  cond = re.search(r"condition=%([^\s,]+)", loop.rest)
  body = re.search(r"body=%([^\s,]+)", loop.rest)
  cond, body = comps.get(cond.group(1)) if cond else None, comps.get(body.group(1)) if body \
      else None
  if cond is None:
    return 1
  named = {i.name: i for i in cond.instrs}
  index, bound = None, None
  for instr in cond.instrs:
    if instr.opcode == "compare" and "direction=LT" in instr.rest:
      lhs, rhs = (named.get(o) for o in (_operands(instr) + ["", ""])[:2])
      index, bound = _tuple_index(lhs), _constant(rhs)
  if bound is None:  # not `gte(i) < constant`: the condition's only constant, if one
    consts = [c for c in map(_constant, cond.instrs) if c is not None]
    return max(consts[0], 1) if len(consts) == 1 else 1
  step, init = 1, 0
  if body is not None and index is not None and body.instrs:
    named = {i.name: i for i in body.instrs}
    root = body.instrs[-1]
    if root.opcode == "tuple" and len(_operands(root)) > index:
      update = named.get(_operands(root)[index])
      if update is not None and update.opcode == "add":
        for o in _operands(update):
          c = _constant(named.get(o))
          step = c if c else step
  if index is not None and caller is not None:
    named = {i.name: i for i in caller.instrs}
    start = named.get((_operands(loop) + [""])[0])
    if start is not None and start.opcode == "tuple" and len(_operands(start)) > index:
      init = _constant(named.get(_operands(start)[index])) or 0
  return max(-(-(bound - init) // max(step, 1)), 1)


def _group_size(rest: str, chips: int) -> int:
  """Devices in each group of a collective: the named axes of `replica_groups=mesh[...]
  {'a'}`, the first group of `{{0,1},...}`, or [groups, size]<=[...]; else every chip."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
  if m:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    axes = re.findall(r"'([^']+)'", m.group(2))
    return math.prod(int(sizes.get(a, 1)) for a in axes) or chips
  m = re.search(r"replica_groups=\{\{([^}]*)\}", rest)
  if m:
    return len([x for x in m.group(1).split(",") if x.strip()]) or chips
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]", rest)
  if m:
    return int(m.group(2))
  return chips


def _walk(comps: dict, entry: str, with_context: bool = False):
  """(instruction, times it runs per call of the program) over every computation reached
  from the entry: loop bodies count once per trip; the 'all-reduce-scatter' fusions of
  TPU programs are not entered (they count as one reduce-scatter). With `with_context`,
  also the call path of the instruction: the non-fusion calls (loops, calls, branches)
  that reached it, a fusion's computations sharing their caller's path."""
  stack = [(entry, 1, 0, ())]
  while stack:
    name, times, depth, context = stack.pop()
    comp = comps.get(name)
    if comp is None or depth > 64:
      continue
    for instr in comp.instrs:
      yield (instr, times, context) if with_context else (instr, times)
      if instr.opcode.endswith("-done") or _reduce_scatter_fusion(instr):
        continue
      trips = 1
      if instr.opcode == "while":
        known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.rest)
        trips = int(known.group(1)) if known else _trip_count(comps, instr, comp)
      inner = context if instr.opcode == "fusion" else context + ((name, instr.name),)
      for role, callee in _CALLEE.findall(instr.rest):
        stack.append((callee, times * (trips if role == "body" else 1), depth + 1, inner))
      for branches in _BRANCHES.findall(instr.rest):
        stack += [(c, times, depth + 1, inner) for c in re.findall(r"%([^\s,]+)", branches)]


def _reduce_scatter_fusion(instr) -> str | None:
  """The called computation of a TPU 'all-reduce-scatter' fusion, else None."""
  if instr.opcode != "fusion":
    return None
  return next((c for _, c in _CALLEE.findall(instr.rest) if c.startswith("all-reduce-scatter")),
              None)


def _operands(instr) -> list[str]:
  inside = instr.rest.split("(", 1)[1] if "(" in instr.rest else ""
  depth, args = 1, []
  for i, ch in enumerate(inside):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      args = re.findall(r"%([^\s,()]+)", inside[:i])
      break
  return args


def _dims(type_text: str) -> list[int]:
  m = _ARRAY.search(type_text)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


_RING_FACTOR = {"all-reduce": 2.0}


def collective_bytes(hlo_text: str, chips: int) -> dict[str, float]:
  """Bytes one chip sends per step, by collective kind (module doc), over the whole
  program: loop bodies are counted once per trip. A TPU program splits one asynchronous
  collective into several fusions (its start, steps interleaved with compute, its end),
  each holding the same collective (same channel_id): it is counted once per call path."""
  comps, entry = parse(hlo_text)
  types = {i.name: i.type_text for c in comps.values() for i in c.instrs}
  totals = dict.fromkeys(KINDS, 0.0)
  seen = set()
  for instr, times, context in _walk(comps, entry, with_context=True):
    fused = _reduce_scatter_fusion(instr)
    kind = "reduce-scatter" if fused else _OPCODE_KIND.get(instr.opcode)
    if not kind:
      continue
    text = " ".join(i.rest for i in comps[fused].instrs) if fused else instr.rest
    channel = re.search(r"\bchannel_id=(\d+)", text)
    if channel:
      if (context, channel.group(1)) in seen:
        continue
      seen.add((context, channel.group(1)))
    n = _group_size(text, chips)
    totals[kind] += times * _sent_bytes(instr, kind, comps[fused] if fused else None, n, types)
  return totals


def _sent_bytes(instr, kind: str, fused, n: int, types: dict) -> float:
  """Bytes one chip sends in one run of collective `instr` over a group of `n` (ring
  algorithms, module doc); `fused`: the computation of a TPU 'all-reduce-scatter'."""
  if fused is not None:
    return array_bytes(fused.params_text) * (n - 1) / n
  out = array_bytes(instr.type_text)
  if instr.opcode.endswith("-start") and instr.type_text.startswith("("):
    out -= sum(array_bytes(types.get(o, "")) for o in _operands(instr))
  if kind == "reduce-scatter":
    out *= n
  factor = 1.0 if kind == "collective-permute" else _RING_FACTOR.get(kind, 1.0) * (n - 1) / n
  return max(out, 0) * factor


def _valid_pairs(out: int, kernel: int, size: int, stride: int, pad_low: int,
                 lhs_dilate: int, rhs_dilate: int) -> int:
  """(output, kernel) position pairs of one spatial dimension that read a real input
  element (not padding nor a dilation hole): XLA's own count for a convolution's FLOPs."""
  count = 0
  for o in range(out):
    for k in range(kernel):
      p = o * stride + k * rhs_dilate - pad_low
      count += 0 <= p <= (size - 1) * lhs_dilate and p % lhs_dilate == 0
  return count


def _window(rest: str, key: str, n: int, default: int) -> list[int]:
  m = re.search(rf"\b{key}=([0-9x_]+)", rest)
  return [int(v) for v in m.group(1).split("x")] if m else [default] * n


def _conv_flops(instr, types: dict) -> float:
  """2 x multiply-adds of a convolution (TPU programs express matmuls as these)."""
  lhs_name, rhs_name = (_operands(instr) + ["", ""])[:2]
  lhs, rhs, out = _dims(types.get(lhs_name, "")), _dims(types.get(rhs_name, "")), _dims(
      instr.type_text)
  labels = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", instr.rest)
  if not (labels and lhs and rhs and out):
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  spatial = sorted(c for c in lhs_l if c.isdigit())
  n = len(spatial)
  win = re.search(r"window=\{([^}]*)\}", instr.rest)
  win = win.group(1) if win else ""
  sizes = _window(win, "size", n, 1)
  strides = _window(win, "stride", n, 1)
  lhs_dil = _window(win, "lhs_dilate", n, 1)
  rhs_dil = _window(win, "rhs_dilate", n, 1)
  pads = re.search(r"\bpad=([0-9_x-]+)", win)
  pad_low = [int(p.split("_")[0]) for p in pads.group(1).split("x")] if pads else [0] * n
  positions = 1
  for i, d in enumerate(spatial):
    positions *= _valid_pairs(out[out_l.index(d)], sizes[i], lhs[lhs_l.index(d)], strides[i],
                              pad_low[i], lhs_dil[i], rhs_dil[i])
  groups = re.search(r"batch_group_count=(\d+)", instr.rest)
  batch = lhs[lhs_l.index("b")] // (int(groups.group(1)) if groups else 1)
  return 2.0 * batch * rhs[rhs_l.index("i")] * out[out_l.index("f")] * positions


def _dot_flops(instr, types: dict) -> float:
  """2 x multiply-adds of a dot: 2 x output elements x contracted size."""
  lhs = _dims(types.get((_operands(instr) + [""])[0], ""))
  m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instr.rest)
  contracted = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if (m and lhs) else 1
  return 2.0 * math.prod(_dims(instr.type_text)) * contracted


def matmul_flops(hlo_text: str) -> float:
  """FLOPs of the program's matmuls (dots and convolutions) per call, on one device, loop
  bodies counted once per trip; what XLA's cost analysis counts for them, which counts each
  loop body only once. Kernels in custom calls (Pallas) are not seen."""
  comps, entry = parse(hlo_text)
  types = {i.name: i.type_text for c in comps.values() for i in c.instrs}
  total = 0.0
  for instr, times in _walk(comps, entry):
    if instr.opcode == "convolution":
      total += times * _conv_flops(instr, types)
    elif instr.opcode == "dot":
      total += times * _dot_flops(instr, types)
  return total


# Matmuls of q k^T's size each splash kernel does per (query block, key block) pair: the
# forward 2 (q k^T, p v); the backward's dq kernel 3 (q k^T, do v^T, ds k) and its dk/dv
# kernel 4 (q k^T, do v^T, p^T do, ds^T q), each recomputing the scores it needs; a fused
# backward kernel (dq with dk and dv) 5.
_SPLASH_MATMULS = (("dkv", 4), ("dq", 3), ("fwd", 2))


def splash_flops(hlo_text: str, block: int, fused_backward: bool = False) -> float:
  """FLOPs of the program's splash attention kernels (Pallas custom calls, which XLA does
  not count) per call, on one device, loop bodies counted once per trip. A kernel on
  q [B, H, T, Dh] with a causal mask in blocks of `block` positions visits (1 + block/T)/2
  of the T x T score blocks; each visit does its matmuls (`_SPLASH_MATMULS`; the dk/dv
  kernel 5 with `fused_backward`) of 2 B H block^2 Dh FLOPs."""
  comps, entry = parse(hlo_text)
  total = 0.0
  for instr, times in _walk(comps, entry):
    if instr.opcode != "custom-call" or not instr.name.startswith("splash_mha"):
      continue
    matmuls = next((n for key, n in _SPLASH_MATMULS if f"_{key}" in instr.name), 0)
    matmuls += fused_backward and "_dkv" in instr.name
    layouts = re.search(r"operand_layout_constraints=\{(.*?)\}, [a-z_]+=", instr.rest, re.S)
    # q: the first floating-point operand, [B, H, T, Dh], or [H, T, Dh] where one sequence
    # per call left the batch axis out
    q = next((_dims(a) for a in _ARRAY_TYPE.findall(layouts.group(1))
              if re.match(r"(bf|f)\d+\[", a) and len(_dims(a)) in (3, 4)), None) \
        if layouts else None
    if not q:
      continue
    b, h, t, dh = q if len(q) == 4 else [1, *q]
    visited = (1 + min(block, t) / t) / 2
    total += times * matmuls * 2.0 * b * h * t * t * dh * visited
  return total


@dataclasses.dataclass(frozen=True)
class Temporary:
  """One temporary buffer: its size, HLO type, and the jax operation that produced it."""
  bytes: int
  type_text: str
  op_name: str


def _dump_file(dump_dir: pathlib.Path, module: str, suffix: str) -> pathlib.Path | None:
  found = sorted(dump_dir.glob(f"module_*.{module}.*{suffix}"))
  return found[-1] if found else None


def largest_temporaries(dump_dir: str | pathlib.Path, module: str, top: int = 5) -> list[Temporary]:
  """The `top` largest temporary buffers of jitted function `module` (e.g. 'jit_train_step')
  in an XLA dump directory, largest first; [] when the dump has none."""
  dump_dir = pathlib.Path(dump_dir)
  assignment = _dump_file(dump_dir, module, "after_optimizations-buffer-assignment.txt")
  if assignment is None:
    return []
  sizes: dict[str, tuple[int, str]] = {}
  in_temp = False
  for line in assignment.read_text().splitlines():
    if line.startswith("allocation "):
      in_temp = "temp" in line and "parameter" not in line and "output" not in line
      continue
    m = re.match(r"\s*value: <\d+ (\S+) @[^>]*> \(size=(\d+),offset=\d+\): (.*)$", line)
    if in_temp and m and int(m.group(2)) > sizes.get(m.group(1), (0, ""))[0]:
      sizes[m.group(1)] = (int(m.group(2)), m.group(3))
  program = _dump_file(dump_dir, module, "after_optimizations.txt")
  op_names = {}
  if program is not None:
    for line in program.read_text().splitlines():
      m = re.match(r"\s*(?:ROOT )?%([^\s=]+) = .*op_name=\"([^\"]*)\"", line)
      if m:
        op_names[m.group(1)] = m.group(2)
  ranked = sorted(sizes.items(), key=lambda kv: -kv[1][0])
  seen, out = collections.Counter(), []
  for name, (size, type_text) in ranked:
    op = op_names.get(name.split("{")[0], name)
    if seen[(op, type_text)]:
      continue
    seen[(op, type_text)] += 1
    out.append(Temporary(size, re.sub(r"\{[^}]*\}", "", type_text), op))
    if len(out) == top:
      break
  return out
