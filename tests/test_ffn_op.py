"""The FFN op ``ffnskip::gated_mlp``: the Triton kernels CUDA runs (here on CPU tensors under
Triton's interpreter where there is no CUDA), and the CPU implementation against HF's MLPs."""

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.models.gemma.modeling_gemma import GemmaMLP
from transformers.models.llama.modeling_llama import LlamaMLP

from lmeval_ffnskip.skip import ffn_op
from lmeval_ffnskip.skip.ffn_op import ACTIVATIONS

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # where the kernels run (CPU: interpreted)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (H, F): powers of two, and a shape whose blocks are partly masked (and whose down launch is split)
SHAPES = ((64, 96), (48, 80))
# atol = rtol against an fp32 reference; 16-bit kernels round the intermediate to x's dtype
TOLERANCE = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}
# (x's shape without H, skip): decoding at batch 1 and 4, [B, H], and prefill-like rows (two
# row blocks, the second all skipping)
CASES = (
    ((1, 1), [False]),
    ((1, 1), [True]),
    ((4, 1), [False, True, False, True]),
    ((4, 1), [True, True, True, True]),
    ((4, 1), [False, False, False, False]),
    ((4,), [True, False, False, True]),
    ((2, 40), [False, True]),
)


@pytest.fixture(scope="module")
def triton_mlp() -> Iterator[ModuleType]:
    """``triton_mlp``, its kernels interpreted where there is no CUDA (never a silent skip)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.fail("these tests need triton: `pip install triton` (the dev extras list it)")
    with pytest.MonkeyPatch.context() as env:
        if not CUDA:
            # read where the kernels are decorated (at import) and while they run
            env.setenv("TRITON_INTERPRET", "1")
        module = importlib.import_module("lmeval_ffnskip.skip.triton_mlp")
        assert CUDA or module.INTERPRETED, "no CUDA, and triton_mlp's kernels were compiled, not interpreted"
        yield module


def weights(h: int, f: int, dtype: torch.dtype, device: str = DEVICE) -> tuple[torch.Tensor, ...]:
    """gate, up [F, H] and down [H, F], scaled so that the output is of order 1."""
    gen = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(f, h, generator=gen) / h**0.5 for _ in range(2))
    down = torch.randn(h, f, generator=gen) / f**0.5
    return tuple(w.to(device, dtype) for w in (gate, up, down))


def reference(x, skip, gate, up, down, activation):
    """The eager gated MLP in fp32 of the same (rounded) values, skipped rows at 0."""
    x, gate, up, down = (t.float() for t in (x, gate, up, down))
    g = F.linear(x, gate)
    a = F.silu(g) if activation == "silu" else F.gelu(g, approximate="tanh")
    out = F.linear(a * F.linear(x, up), down)
    return torch.where(skip.view(-1, *[1] * (x.dim() - 1)), 0, out)


def flags(values: list[bool], device: str = DEVICE) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool, device=device)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernels_match_the_eager_mlp(triton_mlp, shape, dtype, activation):
    h, f = shape
    gate, up, down = weights(h, f, dtype)
    gen = torch.Generator().manual_seed(1)
    tol = TOLERANCE[dtype]
    for rows, values in CASES:
        x = torch.randn(*rows, h, generator=gen).to(DEVICE, dtype)
        skip = flags(values)
        out = triton_mlp.gated_mlp_triton(x, skip, gate, up, down, activation)
        assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
        case = f"{rows} {values}"
        expected = reference(x, skip, gate, up, down, activation)
        torch.testing.assert_close(
            out.float(), expected, atol=tol, rtol=tol, msg=lambda m, c=case: f"{c}: {m}"
        )
        assert torch.equal(out[skip], torch.zeros_like(out[skip])), case


def test_the_interpreter_needs_fp32_tiles_for_bf16(triton_mlp):
    """Why the launcher hands the interpreter fp32 tiles (``UPCAST``) for bf16: its ``tl.dot``
    multiplies the bf16 values' raw 16-bit patterns (seen in Triton 3.6 and 3.9)."""
    if not triton_mlp.INTERPRETED:
        pytest.skip("compiled kernels: the interpreter's dot is not used")
    import triton
    import triton.language as tl

    @triton.jit
    def dot(a_ptr, b_ptr, out_ptr, UPCAST: tl.constexpr):
        i = tl.arange(0, 16)
        a = tl.load(a_ptr + i[:, None] * 16 + i[None, :])
        b = tl.load(b_ptr + i[:, None] * 16 + i[None, :])
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        tl.store(out_ptr + i[:, None] * 16 + i[None, :], tl.dot(a, b))

    a, b = torch.randn(2, 16, 16).to(torch.bfloat16)
    expected = a.float() @ b.float()
    for upcast in (True, False):
        out = torch.empty(16, 16)
        dot[(1,)](a, b, out, UPCAST=upcast)
        assert torch.allclose(out, expected, atol=1e-4) == upcast


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_read_no_weight_where_every_row_skips(triton_mlp, dtype, monkeypatch):
    """Every row skipping: the gate/up programs return before their loads, so the intermediate
    buffer keeps what it held (here a sentinel; computed from NaN weights it would be NaN), and the
    output is exact zeros. (The down programs' early return gives the same zeros as their
    selection; on a GPU ``scripts/kernel_bench.py`` times it.) Where some rows run, theirs are NaN
    and the skipped ones exactly 0 (selected, not multiplied by 0)."""
    h, f = SHAPES[1]
    gate, up, down = (torch.full_like(w, float("nan")) for w in weights(h, f, dtype))
    made: list[torch.Tensor] = []
    empty = torch.empty

    def sentinel(*size: object, **kwargs: object) -> torch.Tensor:
        made.append(empty(*size, **kwargs).fill_(7))
        return made[-1]

    for rows in ((1, 1), (4, 1), (2, 40)):
        x = torch.randn(*rows, h).to(DEVICE, dtype)
        made.clear()
        with monkeypatch.context() as patched:
            patched.setattr(torch, "empty", sentinel)
            out = triton_mlp.gated_mlp_triton(x, flags([True] * rows[0]), gate, up, down, "silu")
        (inter,) = (t for t in made if t.shape == (rows[0] * rows[1], f))
        assert (inter == 7).all(), rows
        assert torch.equal(out, torch.zeros_like(x)), rows
    skip = flags([True, False, True])
    out = triton_mlp.gated_mlp_triton(torch.randn(3, 1, h).to(DEVICE, dtype), skip, gate, up, down, "silu")
    assert torch.equal(out[skip], torch.zeros_like(out[skip])) and out[~skip].isnan().all()


def test_the_cuda_implementation_is_the_triton_launcher(triton_mlp):
    """What the op runs on CUDA (the registered kernel; here interpreted where there is no CUDA)
    gives what the CPU implementation gives."""
    gate, up, down = weights(64, 96, torch.float32)
    x, skip = torch.randn(4, 1, 64).to(DEVICE), flags([False, True, False, False])
    cuda_impl = torch.ops.ffnskip.gated_mlp if CUDA else ffn_op._gated_mlp_cuda
    out = cuda_impl(x, skip, gate, up, down, "gelu_tanh")
    cpu = (t.cpu() for t in (x, skip, gate, up, down))
    torch.testing.assert_close(
        out.cpu(), torch.ops.ffnskip.gated_mlp(*cpu, "gelu_tanh"), atol=2e-5, rtol=2e-5
    )


@pytest.mark.skipif(not CUDA, reason="a CUDA graph needs CUDA (the GPU run checks it)")
def test_a_cuda_graph_replay_follows_the_flags(triton_mlp):
    """The launcher captured once; each replay reads the flags then in the skip tensor."""
    gate, up, down = weights(*SHAPES[1], torch.bfloat16)
    x, skip = torch.randn(4, 1, SHAPES[1][0]).to(DEVICE, torch.bfloat16), flags([False] * 4)
    triton_mlp.gated_mlp_triton(x, skip, gate, up, down, "silu")  # compiled before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_mlp.gated_mlp_triton(x, skip, gate, up, down, "silu")
    for values in ([True, False, True, False], [True] * 4, [False] * 4):
        skip.copy_(flags(values))
        graph.replay()
        expected = reference(x, skip, gate, up, down, "silu")
        torch.testing.assert_close(out.float(), expected, atol=4e-2, rtol=4e-2)
        assert torch.equal(out[skip], torch.zeros_like(out[skip])), values


def test_kernels_compile_for_h100(triton_mlp):
    """The interpreter does not compile: compile the kernels for sm_90 (no GPU needed), bf16 on
    tensor cores, fp32 in true fp32 (no MMA, so no tf32). Uses ``triton.compile``, whose API is
    Triton's own (3.6 and 3.9)."""
    script = textwrap.dedent(
        """
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from lmeval_ffnskip.skip import triton_mlp as tm

        assert not tm.INTERPRETED
        def build(fn, signature, constants, aligned):
            # whether fn's code uses tensor cores (MMA); its first `aligned` arguments 16-aligned
            attrs = {(i,): [["tt.divisibility", 16]] for i in range(aligned)}
            signature = {**signature, **dict.fromkeys(constants, "constexpr")}
            source = ASTSource(fn, signature, constants, attrs)
            options = {"num_warps": tm.NUM_WARPS, "num_stages": tm.NUM_STAGES}
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
            return "nvidia_mma" in compiled.asm["ttgir"]

        for dt, size in (("bf16", 2), ("fp32", 4)):
            p = tm.plan(8, 4096, 11008, size, 132)
            assert p.splits > 1
            shape = {"H": 4096, "F": 11008}
            for act in tm.ACTIVATIONS:
                sig = {"x_ptr": f"*{dt}", "skip_ptr": "*u8", "gate_ptr": f"*{dt}", "up_ptr": f"*{dt}",
                       "inter_ptr": f"*{dt}", "M": "i32", "T": "i32"}
                consts = {**shape, "ACTIVATION": act, "UPCAST": False, "BLOCK_M": p.block_m,
                          "BLOCK_F": p.block_f, "BLOCK_K": p.block_k_up}
                assert build(tm._gate_up_kernel, sig, consts, 5) == (dt == "bf16")
            sig = {"inter_ptr": f"*{dt}", "skip_ptr": "*u8", "down_ptr": f"*{dt}", "out_ptr": "*fp32",
                   "M": "i32", "T": "i32"}
            consts = {**shape, "K_PER_SPLIT": p.k_per_split, "UPCAST": False, "BLOCK_M": p.block_m,
                      "BLOCK_N": p.block_n, "BLOCK_K": p.block_k_down}
            assert build(tm._down_kernel, sig, consts, 4) == (dt == "bf16")
            sig = {"partial_ptr": "*fp32", "out_ptr": f"*{dt}", "N": "i32"}
            build(tm._sum_splits_kernel, sig, {"SPLITS": p.splits, "BLOCK": 1024}, 3)
        print("compiled")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9 warns where unset (and defaults to 1)
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_plan_fills_an_h100_and_keeps_tiny_shapes_small(triton_mlp):
    from triton import cdiv

    # Llama-2-7B on 132 SMs: at least PROGRAMS_PER_SM programs per SM in each weight-reading launch
    for m in (1, 8):
        p = triton_mlp.plan(m, 4096, 11008, 2, 132)
        assert cdiv(11008, p.block_f) >= triton_mlp.PROGRAMS_PER_SM * 132
        assert cdiv(4096, p.block_n) * p.splits >= triton_mlp.PROGRAMS_PER_SM * 132
        assert p.k_per_split % p.block_k_down == 0 and (p.splits - 1) * p.k_per_split < 11008
    # the test shapes take both down paths and loop over K (see SHAPES)
    assert triton_mlp.plan(4, 64, 96, 2, 1).splits == 1 and triton_mlp.plan(4, 48, 80, 2, 1).splits == 2
    assert triton_mlp.plan(4, 48, 80, 2, 1).block_k_up < 48


# ---- the op on CPU (plain torch)


def hf_mlp(kind: str, dtype: torch.dtype) -> tuple[torch.nn.Module, str]:
    """A stock HF MLP of tiny size and the op's activation for its config."""
    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(hidden_size=64, intermediate_size=96)
        return LlamaMLP(config).to(dtype), ACTIVATIONS[config.hidden_act]
    config = GemmaConfig(hidden_size=64, intermediate_size=96)
    return GemmaMLP(config).to(dtype), ACTIVATIONS[config.hidden_act]


def mlp_weights(mlp: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    return tuple(p.weight.detach() for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_cpu_op_equals_the_hf_mlp_bit_for_bit(kind, dtype):
    mlp, activation = hf_mlp(kind, dtype)
    x = torch.randn(4, 3, 64).to(dtype)
    with torch.no_grad():
        stock = mlp(x)
    for values in ([False] * 4, [True, False, False, True], [True] * 4):
        skip = flags(values, "cpu")
        out = torch.ops.ffnskip.gated_mlp(x, skip, *mlp_weights(mlp), activation)
        assert torch.equal(out[~skip], stock[~skip]), values
        assert torch.equal(out[skip], torch.zeros_like(out[skip])), values


def test_cpu_op_runs_no_projection_where_every_row_skips(monkeypatch):
    """Every row skipping: no linear runs (counted at ``F.linear``, which the op calls), zeros
    come back; one running row runs all three."""
    calls: list[int] = []
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *args: calls.append(1) or linear(*args))
    gate, up, down = weights(64, 96, torch.float32, "cpu")
    x = torch.randn(4, 1, 64)
    out = torch.ops.ffnskip.gated_mlp(x, flags([True] * 4, "cpu"), gate, up, down, "silu")
    assert torch.equal(out, torch.zeros_like(x)) and not calls
    torch.ops.ffnskip.gated_mlp(x, flags([True, True, False, True], "cpu"), gate, up, down, "silu")
    assert len(calls) == 3


def test_cpu_op_refuses_an_unknown_activation():
    gate, up, down = weights(64, 96, torch.float32, "cpu")
    with pytest.raises(ValueError, match="relu"):
        torch.ops.ffnskip.gated_mlp(torch.randn(1, 1, 64), flags([True], "cpu"), gate, up, down, "relu")


def test_activations_of_the_supported_configs():
    for config in (LlamaConfig(), MistralConfig(), Qwen2Config(), Qwen3Config()):
        assert ACTIVATIONS[config.hidden_act] == "silu"
    assert ACTIVATIONS[GemmaConfig().hidden_act] == "gelu_tanh"
    for config in (Gemma2Config(), Gemma3TextConfig()):
        assert ACTIVATIONS[config.hidden_activation] == "gelu_tanh"
    assert ACTIVATIONS.get("gelu") is None and ACTIVATIONS.get("relu") is None


def test_op_compiles_whole_with_the_decision_inside():
    """One inductor graph (fullgraph) on CPU; the flags are an input, not a guard: the same graph
    gives each decision's values."""
    mlp, activation = hf_mlp("llama", torch.float32)
    gate, up, down = mlp_weights(mlp)

    def layer(x, skip):
        return x + torch.ops.ffnskip.gated_mlp(x, skip, gate, up, down, activation)

    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    x = torch.randn(4, 1, 64)
    for values in ([False] * 4, [True, False, False, True], [True] * 4):
        skip = flags(values, "cpu")
        torch.testing.assert_close(compiled(x, skip), layer(x, skip), atol=0, rtol=0)


def test_op_registration():
    """Schema, fake (shape, dtype, strides) and dispatch agree (``torch.library.opcheck``)."""
    gate, up, down = weights(64, 96, torch.float32, "cpu")
    for values in ([False, True], [True, True]):
        args = (torch.randn(2, 1, 64), flags(values, "cpu"), gate, up, down, "gelu_tanh")
        torch.library.opcheck(torch.ops.ffnskip.gated_mlp.default, args)
