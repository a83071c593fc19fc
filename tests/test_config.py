from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest
import torch

from megatron_ipt.config import (
    ConfigError,
    config_from_argv,
    config_help,
    config_keys,
    load_config,
    run_cli,
    save_config,
)


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    bf16: bool = False
    optim: Optim = field(default_factory=Optim)
    paths: list[tuple[float, str]] = field(default_factory=list)
    init_from: str | None = None

    def validate(self) -> None:
        if self.steps <= 0:
            raise ConfigError("steps must be positive")


def test_yaml_include_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\noptim:\n  lr: 0.1\n")
    (tmp_path / "run.yaml").write_text("include: base.yaml\nname: x\noptim:\n  betas: [0.8, 0.9]\n")
    cfg = load_config(Run, tmp_path / "run.yaml", ["--optim.lr=3e-4", "--paths", "[[0.7, a], [0.3, b]]"])
    assert cfg.steps == 5 and cfg.name == "x"
    assert cfg.optim == Optim(lr=3e-4, betas=(0.8, 0.9))
    assert cfg.paths == [(0.7, "a"), (0.3, "b")]
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Run, tmp_path / "out.yaml") == cfg


def test_config_from_argv(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 7\n")
    cfg = config_from_argv(Run, ["--config", str(tmp_path / "c.yaml"), "--bf16=true", "--init-from=/m"])
    assert (cfg.steps, cfg.bf16, cfg.init_from) == (7, True, "/m")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--optim.lrr=1"], "unknown config key optim.lrr"),
        (["--steps=abc"], "steps: expected an integer"),
        (["--bf16=maybe"], "bf16: expected true/false"),
        (["--steps=0"], "steps must be positive"),
        (["steps=1"], "must look like --key"),
        (["--optim.betas=[1]"], "expected 2 items"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, overrides)


def test_bad_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Run, tmp_path / "bad.yaml")
    (tmp_path / "unk.yaml").write_text("stepz: 1\n")
    with pytest.raises(ConfigError, match=r"unk.yaml: unknown config key stepz"):
        load_config(Run, tmp_path / "unk.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "missing.yaml")
    (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Run, tmp_path / "loop.yaml")


@dataclass
class Described:
    plain: int = 1  # a trailing comment
    # a comment above
    # on two lines
    above: str = "x"
    both: float = 2.0  # the trailing one wins  (a "# in a string" is no comment: see next)
    hashed: str = "#not-a-comment"
    nested: Optim = field(default_factory=Optim)


def test_config_help_lists_every_key_with_type_default_and_description():
    keys = {k.key: k for k in config_keys(Described)}
    assert list(keys) == ["plain", "above", "both", "hashed", "nested.lr", "nested.betas"]
    assert keys["plain"].description == "a trailing comment"
    assert keys["above"].description == "a comment above on two lines"
    assert keys["both"].description.startswith("the trailing one wins")
    assert keys["hashed"].description == "" and keys["hashed"].default == "#not-a-comment"
    assert (keys["nested.betas"].type, keys["nested.betas"].default) == ("tuple[float, float]", (0.9, 0.95))
    text = config_help(Described)
    assert "--plain=1" in text and "(int)  a trailing comment" in text and "--nested.lr=0.001" in text


def test_stage_configs_describe_every_key():
    from megatron_ipt.corpora.recipes import CorporaConfig
    from megatron_ipt.synth.config import SynthesizeConfig
    from megatron_ipt.train.config import TrainConfig

    for cls in (TrainConfig, SynthesizeConfig, CorporaConfig):
        missing = [k.key for k in config_keys(cls) if not k.description]
        assert not missing, f"{cls.__name__}: keys without a '# description' comment: {missing}"


@dataclass
class Tool:
    input: list[str] = field(default_factory=list)  # one or more inputs
    output_prefix: str = ""  # where it goes
    progress: bool = True  # show progress
    skip_bad_records: bool = False  # skip bad records
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # a dtype
    name: str | None = None  # a string that may be null
    optim: Optim = field(default_factory=Optim)

    ALIASES: ClassVar[dict[str, str]] = {"skip_bad": "skip_bad_records", "fp32": "dtype=float32", "inputs": "input"}
    POSITIONAL: ClassVar[str] = "input"


@pytest.mark.parametrize(
    "argv",
    [
        ["--input", "a", "b", "--output-prefix", "o", "--skip-bad", "--no-progress", "--optim.lr", "0.5"],
        ["--input=a", "--input=b", "--output_prefix=o", "--skip_bad_records=true", "--progress=false",
         "--optim.lr=0.5"],
        ["--inputs=[a, b]", "--output-prefix=o", "--skip-bad", "true", "--progress", "false", "--optim.lr=0.5"],
        ["a", "b", "--output-prefix", "o", "--skip-bad", "--progress=no", "--optim.lr=5e-1"],
    ],
)
def test_one_grammar_many_spellings(argv):
    cfg = config_from_argv(Tool, argv)
    assert (cfg.input, cfg.output_prefix, cfg.skip_bad_records, cfg.progress, cfg.optim.lr) == (
        ["a", "b"], "o", True, False, 0.5)


def test_grammar_values_keep_their_type(tmp_path):
    cfg = config_from_argv(Tool, ["--output-prefix", "yes", "--name", "null", "--input", "0.5", "--fp32"])
    assert (cfg.output_prefix, cfg.name, cfg.input, cfg.dtype) == ("yes", None, ["0.5"], "float32")
    assert config_from_argv(Tool, ["--dtype", "bf16"]).dtype == "bfloat16"  # one spelling set, normalised
    assert config_from_argv(Tool, ["--dtype=fp32"]).dtype == "float32"
    (tmp_path / "t.yaml").write_text("inputs: [x]\ndtype: fp32\n")  # aliases hold in files too
    cfg = config_from_argv(Tool, ["--config", str(tmp_path / "t.yaml"), "--skip-bad"])
    assert (cfg.input, cfg.dtype, cfg.skip_bad_records) == (["x"], "float32", True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--outptu-prefix=o"], r"unknown config key outptu_prefix \(did you mean --output_prefix\?\)"),
        (["--optim.lrr=1"], r"unknown config key optim.lrr \(valid keys here: lr, betas\)"),
        (["--progress=maybe"], "progress: expected true/false, got 'maybe'"),
        (["--dtype=int8"], "dtype: expected one of"),
        (["--output-prefix"], "has no value"),
        (["--input"], "needs one or more values"),
        (["--fp32=1"], "--fp32 takes no value"),
    ],
)
def test_grammar_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        config_from_argv(Tool, argv)


def test_run_cli_help_and_one_line_errors(capsys):
    seen = []
    assert run_cli(Tool, ["--help"], seen.append, "A tool.") == 0
    out = capsys.readouterr().out
    assert out.startswith("A tool.") and "--output_prefix=" in out and "(str)  where it goes" in out
    assert "[also --skip-bad]" in out and "--fp32  is --dtype=float32" in out
    assert run_cli(Tool, ["x", "--output-prefix", "o"], seen.append, "A tool.") == 0
    assert seen[0].input == ["x"]

    def fails(cfg: Tool) -> int:
        raise FileNotFoundError(f"{cfg.input[0]}: not found\n(second line)")

    assert run_cli(Tool, ["--nope=1"], fails, "A tool.") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown config key nope" in err and err.count("\n") == 1
    assert run_cli(Tool, ["x"], fails, "A tool.", errors=(FileNotFoundError,)) == 2
    assert capsys.readouterr().err == "error: x: not found (second line)\n"


@dataclass(frozen=True)
class Decode:
    temperature: float = 0.0  # how random
    stop: tuple[str, ...] = ()  # where to stop

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class Sampler:
    decode: Decode = field(default_factory=lambda: Decode(stop=("END",)))  # a section its factory fills
    engine: Optim = field(default_factory=Optim)

    ALIASES: ClassVar[dict[str, str]] = {"temperature": "decode.temperature", "stop": "decode.stop", "engine": "engine.lr"}


def test_aliases_into_a_section_its_checks_and_defaults(tmp_path):
    cfg = config_from_argv(Sampler, ["--temperature=0.5", "--stop", "a", "b", "--stop=c"])
    assert cfg.decode == Decode(0.5, ("a", "b", "c"))  # a tuple[str, ...] key takes values as a list key does
    (tmp_path / "s.yaml").write_text("temperature: 0.7\nstop: [x]\nengine:\n  lr: 0.2\n")
    cfg = config_from_argv(Sampler, ["--config", str(tmp_path / "s.yaml")])
    assert (cfg.decode, cfg.engine.lr) == (Decode(0.7, ("x",)), 0.2)  # in files too; a key is never an alias
    (tmp_path / "both.yaml").write_text("stop: [x]\ndecode:\n  stop: [y]\n")
    with pytest.raises(ConfigError, match="stop is decode.stop: give one of them"):
        config_from_argv(Sampler, ["--config", str(tmp_path / "both.yaml")])
    with pytest.raises(ConfigError, match=r"decode: temperature must be >= 0, got -1"):
        config_from_argv(Sampler, ["--temperature=-1"])
    assert '--decode.stop=["END"]' in config_help(Sampler)  # the section's defaults as its factory made them


TOOLS = {  # module -> its settings class: every command line of the project, in the one grammar
    "data_tools.preprocess_data": "PreprocessArgs",
    "data_tools.merge_datasets": "MergeArgs",
    "data_tools.inspect_data": "InspectArgs",
    "data_tools.build_synthesizer_data": "BuildSynthesizerDataArgs",
    "data_tools.evaluate_synthesizer": "EvaluateSynthesizerArgs",
    "data_tools.synthesize": "SynthesizeConfig",
    "data_tools.build_corpora": "CorporaConfig",
    "data_tools.build_instruction_data": "InstructionDataConfig",
    "megatron_ipt.eval.heldout": "EvaluateArgs",
    "megatron_ipt.eval.suite": "SuiteArgs",
    "megatron_ipt.train.export": "ExportArgs",
    "megatron_ipt.demo.__main__": "DemoArgs",
    "megatron_ipt.train.__main__": "TrainConfig",
    "megatron_ipt.cluster.preflight": "PreflightArgs",
    "megatron_ipt.cluster.slurm": "TrainArgs",
}


@pytest.mark.parametrize("module", list(TOOLS))
def test_every_tool_helps_with_every_key(module, capsys):
    import importlib

    mod = importlib.import_module(module)
    cls = getattr(mod, TOOLS[module])
    assert mod.main(["--help"]) == 0
    out = capsys.readouterr().out
    for key in config_keys(cls):
        assert key.description, f"{module}: --{key.key} has no '# description' comment"
        assert f"--{key.key}=" in out and key.description in out, key.key
    assert mod.main(["--no-such-key=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown config key no_such_key" in err and err.count("\n") == 1


def test_one_dtype_policy():
    from megatron_ipt.config import DType, resolve_dtype

    assert resolve_dtype("auto", "cuda") is DType.BF16 and resolve_dtype("auto", "cpu") is DType.FP32
    assert resolve_dtype("bf16", "cpu") is DType.BF16 and resolve_dtype("half") is DType.FP16
    assert DType.FP32.torch is torch.float32 and DType.BF16 == "bfloat16"
    with pytest.raises(ConfigError, match="dtype must be auto or one of"):
        resolve_dtype("int8")


@dataclass
class Relay:
    name: str = ""
    rest: list[str] = field(default_factory=list)

    PASSTHROUGH: ClassVar[str] = "rest"


def test_passthrough_takes_everything_after_a_bare_double_dash():
    cfg = config_from_argv(Relay, ["--name", "x", "--", "--steps=3", "--data.train", "a b"])
    assert cfg.name == "x" and cfg.rest == ["--steps=3", "--data.train", "a b"]
    with pytest.raises(ConfigError, match="override must look like"):
        config_from_argv(Run, ["--", "--steps=3"])  # a config without PASSTHROUGH takes no bare --
