"""The start command follows the machine: vLLM's dtype from the CPU flags, its threads from
the core count (server/hardware.py, server/engines/vllm_process.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.settings import Settings
from server import hardware
from server.engines import vllm_args
from server.engines.vllm_process import VLLMProcess, cpu_env

ZEN4 = "fpu vme avx2 avx512f avx512_bf16 avx512_vnni"  # native bf16
ZEN2 = "fpu vme avx2 fma"  # no AVX-512, no bf16


def cpuinfo(tmp_path: Path, flags: str, key: str = "flags") -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(
        f"processor\t: 0\nmodel name\t: AMD EPYC\n{key}\t\t: {flags}\n\nprocessor\t: 1\n"
    )
    return path


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    assert hardware.cpu_flags(cpuinfo(tmp_path, ZEN4)) >= {"avx512f", "avx512_bf16"}
    assert "avx512_bf16" not in hardware.cpu_flags(cpuinfo(tmp_path, ZEN2))
    assert "asimd" in hardware.cpu_flags(cpuinfo(tmp_path, "fp asimd bf16", key="Features"))
    assert hardware.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("requested", "gpu", "flags", "expected"),
    [
        ("auto", False, ZEN2, "float32"),  # bf16 would be emulated: 2-4x slower
        ("auto", False, ZEN4, "bfloat16"),
        ("auto", False, "avx2 amx_bf16 amx_tile", "bfloat16"),
        ("auto", True, ZEN2, "auto"),  # on a GPU, vLLM's choice from the model config
        ("float32", False, ZEN4, "float32"),  # an explicit choice always wins
        ("bfloat16", False, ZEN2, "bfloat16"),
    ],
)
def test_dtype_follows_the_hardware(requested, gpu, flags, expected):
    assert hardware.choose_dtype(requested, gpu=gpu, flags=frozenset(flags.split())) == expected


def _dtype_flag(args: list[str]) -> str:
    return args[args.index("--dtype") + 1]


def test_the_start_command_passes_this_machines_dtype(tutor_home):
    """What `make serve` starts: the dtype this machine's flags call for, read the same way."""
    expected = hardware.choose_dtype(
        "auto", gpu=hardware.has_gpu(), flags=hardware.cpu_flags(Path("/proc/cpuinfo"))
    )
    settings = Settings(home=tutor_home)
    assert settings.vllm_dtype == "auto"
    command = VLLMProcess(Path("python"), vllm_args(settings, "/m", "m")).command()
    assert _dtype_flag(command) == expected
    assert expected in ("float32", "bfloat16", "auto")
    pinned = Settings(home=tutor_home, vllm_dtype="float16")
    assert _dtype_flag(vllm_args(pinned, "/m", "m")) == "float16"


@pytest.mark.parametrize(
    ("cores", "reserved"),
    [(1, "0"), (2, "0"), (4, None), (64, None)],
)
def test_threads_give_a_small_machine_every_core(cores, reserved):
    """On 2 cores vLLM's own default binds the model to one and keeps the other for its
    scheduler; here every core goes to the model (docs/PERFORMANCE.md measures why)."""
    env = cpu_env(cores)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert env.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == reserved


def test_the_managed_process_gets_the_thread_settings(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    process = VLLMProcess(Path("python"), ["--model", "m"])
    assert process.env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert process.env.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == cpu_env().get(
        "VLLM_CPU_NUM_OF_RESERVED_CPU"
    )
    # an operator's own setting wins over the computed one
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    assert VLLMProcess(Path("python"), []).env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"


def test_the_kv_block_fits_a_persona_on_cpu(tutor_home):
    """vLLM-CPU's own 128-token block is longer than a persona, so prefix caching never hit;
    the gateway asks for 32 on CPU, leaves a GPU's default alone, and an explicit size wins."""
    assert hardware.choose_block_size(None, gpu=False) == 32
    assert hardware.choose_block_size(None, gpu=True) is None
    assert hardware.choose_block_size(64, gpu=False) == 64
    args = vllm_args(Settings(home=tutor_home), "/m", "m")
    expected = hardware.choose_block_size(None, gpu=hardware.has_gpu())
    if expected is None:
        assert "--block-size" not in args
    else:
        assert args[args.index("--block-size") + 1] == str(expected)


def test_ngram_speculation_is_opt_in_and_auto_means_cpu_only(tutor_home):
    """The corrector's reply is mostly the learner's sentence: prompt-lookup drafts, measured on
    CPU (docs/PERFORMANCE.md, section 7). Off by default; ``auto`` is n-gram on CPU only."""
    assert json.loads(hardware.choose_speculation("auto", gpu=False))["method"] == "ngram"
    assert hardware.choose_speculation("auto", gpu=True) is None
    assert hardware.choose_speculation("off", gpu=False) is None
    own = '{"method": "ngram", "num_speculative_tokens": 2}'
    assert hardware.choose_speculation(own, gpu=True) == own
    default = vllm_args(Settings(home=tutor_home), "/m", "m")
    assert "--speculative-config" not in default
    args = vllm_args(Settings(home=tutor_home, vllm_speculation="auto"), "/m", "m")
    expected = hardware.choose_speculation("auto", gpu=hardware.has_gpu())
    if expected is None:
        assert "--speculative-config" not in args
    else:
        assert args[args.index("--speculative-config") + 1] == expected
