"""Compile every Triton kernel variant the fused losses launch for NVIDIA sm_90 (H100/H200), no GPU needed.

Run by test_triton_compile.py in a subprocess without TRITON_INTERPRET: the interpreter runs
the kernels' math, but accepts code the compiler rejects (a plain Python global read inside a
kernel, a variable whose type differs between branches), which only shows when compiling.
It also asks ptxas for each variant's registers per thread: no spills and at most 128, so that
several blocks fit on an SM (num_warps comes from kdst.losses.triton.common.warps_for, as when
the losses launch them).  Prints one line per variant; exits non-zero on the first that fails.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kdst.losses.triton import rnnt, word_kd
from kdst.losses.triton.common import warps_for

TARGET = GPUTarget("cuda", 90, 32)
MAX_REGISTERS = 128


def compile_variant(kernel, types: dict[str, str], constexprs: dict, per_thread: int | None = None) -> None:
    """Compile one variant with the num_warps the losses launch it with (``per_thread``: see warps_for)."""
    signature = {**types, **{name: "constexpr" for name in constexprs}}
    assert set(signature) == set(kernel.arg_names), kernel.arg_names
    source = ASTSource(fn=kernel, signature={name: signature[name] for name in kernel.arg_names},
                       constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
    warps = warps_for(constexprs["BLOCK_V"], per_thread) if per_thread else 4
    compiled = triton.compile(source, target=TARGET, options={"num_warps": warps})
    registers, spilled = ptxas_usage(compiled.asm["ptx"])
    print(f"{kernel.fn.__name__} {constexprs} num_warps={warps}: {registers} registers, {spilled} bytes spilled",
          flush=True)
    if spilled or registers > MAX_REGISTERS:
        raise SystemExit(f"{kernel.fn.__name__} {constexprs}: {registers} registers, {spilled} bytes spilled "
                         f"(at most {MAX_REGISTERS} and no spills keep several blocks per SM)")


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill store bytes) of a kernel, from the ptxas that ships with Triton."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        report = subprocess.run([str(ptxas), f"-arch=sm_{TARGET.arch}a", "-v", str(source), "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spilled = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return registers, spilled


def ints(*names: str) -> dict[str, str]:
    return {name: "i32" for name in names}


def main() -> None:
    for dtype, has_mask, write_grad in itertools.product(("*bf16", "*fp16", "*fp32"), (False, True), (False, True)):
        common = {"grad_ptr": dtype if write_grad else "*fp32", "loss_ptr": "*fp32",
                  "mask_ptr": "*u8" if has_mask else "*fp32", "inv_t": "fp32"}
        compile_variant(word_kd._word_kd_full_kernel,
                        {"student_ptr": dtype, "teacher_ptr": dtype, **common,
                         **ints("V", "stride_s", "stride_t", "stride_g")},
                        {"HAS_MASK": has_mask, "WRITE_GRAD": write_grad, "BLOCK_V": word_kd.MAX_BLOCK_V},
                        word_kd.ELEMENTS_PER_THREAD)
        for has_rest in (False, True):  # top-k renormalised, or plus the rest (kd.topk_rest)
            compile_variant(word_kd._word_kd_topk_kernel,
                            {"student_ptr": dtype, "index_ptr": "*i64", "topk_ptr": dtype, "rest_ptr": "*fp32",
                             **common, **ints("V", "K", "stride_s", "stride_i", "stride_k", "stride_g")},
                            {"HAS_MASK": has_mask, "HAS_REST": has_rest, "WRITE_GRAD": write_grad,
                             "BLOCK_V": word_kd.MAX_BLOCK_V, "BLOCK_K": 8}, word_kd.ELEMENTS_PER_THREAD)

    lattice = {"y_ptr": "*i64", "t_len_ptr": "*i32", "u_len_ptr": "*i32", "inv_t": "fp32",
               **ints("T", "U1", "V", "s_sb", "s_st", "s_su", "z_sb", "z_st", "z_su", "y_sb", "blank")}
    stats = {name: "*fp32" for name in ("phi_ptr", "psi_ptr", "lse_ptr", "lse_s_ptr", "lse_t_ptr", "shift_ptr",
                                        "kl_ptr")}
    saved = {name: "*fp32" for name in ("phi_ptr", "psi_ptr", "lse_ptr", "alpha_ptr", "beta_ptr", "log_like_ptr",
                                        "g_nll_ptr", "lse_s_ptr", "lse_t_ptr", "shift_ptr", "g_kd_ptr")}
    for dtype in ("*bf16", "*fp32"):
        for with_rnnt, kd in ((True, 0), (True, 1), (True, 2), (False, 1), (False, 2)):
            for same_t in (True, False):
                compile_variant(rnnt._lattice_stats_kernel, {"s_ptr": dtype, "z_ptr": dtype, **lattice, **stats},
                                {"WITH_RNNT": with_rnnt, "KD": kd, "SAME_T": same_t, "BLOCK_V": 512},
                                rnnt.STATS_PER_THREAD)
            compile_variant(rnnt._lattice_grad_kernel,
                            {"s_ptr": dtype, "z_ptr": dtype, "grad_ptr": dtype, **lattice, **saved,
                             **ints("g_sb", "g_st", "g_su")},
                            {"WITH_RNNT": with_rnnt, "KD": kd, "BLOCK_V": 512}, rnnt.GRAD_PER_THREAD)
    for block in (1024, rnnt.MAX_BLOCK_V):  # the wider blocks lattice_block picks for larger vocabularies
        compile_variant(rnnt._lattice_stats_kernel, {"s_ptr": "*bf16", "z_ptr": "*bf16", **lattice, **stats},
                        {"WITH_RNNT": True, "KD": 2, "SAME_T": False, "BLOCK_V": block}, rnnt.STATS_PER_THREAD)
        compile_variant(rnnt._lattice_grad_kernel,
                        {"s_ptr": "*bf16", "z_ptr": "*bf16", "grad_ptr": "*bf16", **lattice, **saved,
                         **ints("g_sb", "g_st", "g_su")},
                        {"WITH_RNNT": True, "KD": 1, "BLOCK_V": block}, rnnt.GRAD_PER_THREAD)
    compile_variant(rnnt._alpha_beta_kernel,
                    {**{name: "*fp32" for name in ("phi_ptr", "psi_ptr", "alpha_ptr", "beta_ptr", "log_like_ptr")},
                     "t_len_ptr": "*i32", "u_len_ptr": "*i32", **ints("T", "U1")}, {"BLOCK_U": 128})


if __name__ == "__main__":
    main()
