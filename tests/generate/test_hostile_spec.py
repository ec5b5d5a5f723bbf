"""Spec files made to hurt: alias bombs, self-referring aliases, deep nesting, huge files
and numbers too large for a float are refused at once with a one-line ValueError that
names the limit or the key, in the reader and in the ``mlmsim`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from mlmsim import cli
from mlmsim.generate.spec import ModelSpec
from mlmsim.generate.spec_files import MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_NODES

BIG = "1" + "0" * 400  # 10**400: a whole number beyond the largest float (about 1.8e308)
TOO_BIG_FOR_FLOAT = "1" + "0" * 309  # 10**309, the smallest power of ten beyond it


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs": each level is a list of ``width`` aliases of the one below, so
    the expansion holds width**levels strings."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def minimal(**over: str) -> str:
    """A small valid YAML spec; ``over`` replaces the text of top-level keys."""
    keys = {"gamma": "{Intercept: 1.0, x: 0.5}", "random": "[Intercept]", "T": "[[1.0]]",
            "sigma2": "2.0", "n_groups": "5", "group_sizes": "3",
            "predictors": "[{kind: continuous, name: x, mean: 0.0}]"}
    keys.update(over)
    return "".join(f"{k}: {v}\n" for k, v in keys.items())


def test_alias_bomb_is_refused_at_once_in_little_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(9, 9))
    code = textwrap.dedent(f"""
        import json, resource, sys, time
        from mlmsim.generate.spec import ModelSpec
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        try:
            ModelSpec.load({str(path)!r})
            error = None
        except ValueError as exc:
            error = str(exc)
        elapsed = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB else
        print(json.dumps({{"error": error, "elapsed": elapsed, "peak_before": before * scale,
                          "peak_after": after * scale}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] is not None and f"MAX_SPEC_NODES = {MAX_SPEC_NODES}" in out["error"]
    assert "\n" not in out["error"]
    assert out["elapsed"] < 1.0
    # the peak resident memory of the process does not grow by more than 16 MiB
    assert out["peak_after"] - out["peak_before"] < 16 * 2**20, out
    print(f"alias bomb ({path.stat().st_size} bytes): refused in {out['elapsed'] * 1e3:.2f} ms, "
          f"peak RSS {out['peak_after'] / 2**20:.1f} MiB "
          f"(+{(out['peak_after'] - out['peak_before']) / 2**20:.2f} MiB)")


def test_alias_bomb_through_the_command_exits_2(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(9, 10))
    env = dict(os.environ, MPLBACKEND="Agg")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mlmsim", "spec", "check", str(path)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert time.monotonic() - t0 < 60
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "MAX_SPEC_NODES" in lines[0], proc.stderr


def expanded_values(levels: int, width: int) -> int:
    """The values of :func:`alias_bomb` once expanded: the document, each key, each list
    and each string (MAX_SPEC_NODES counts these)."""
    lists = [1 + width]
    for _ in range(1, levels):
        lists.append(1 + width * lists[-1])
    return 1 + sum(1 + n for n in lists)


def test_aliases_are_data_until_their_expansion_crosses_the_limit():
    text = minimal(u_dist="&n {kind: normal}", r_dist="*n")
    spec = ModelSpec.from_yaml(text)
    assert spec.u_dist == spec.r_dist
    for width in (3, 10, 47):
        levels = next(k for k in range(1, 40) if expanded_values(k, width) > MAX_SPEC_NODES)
        # one level less is within the limit: read (and then refused as a spec, not a bomb)
        with pytest.raises(ValueError, match="unknown key 'a0'"):
            ModelSpec.from_yaml(alias_bomb(levels - 1, width))
        with pytest.raises(ValueError, match=f"MAX_SPEC_NODES = {MAX_SPEC_NODES}"):
            ModelSpec.from_yaml(alias_bomb(levels, width))


@pytest.mark.parametrize("text", [
    "a: &a [*a]\n",
    "a: &a {b: [1, *a]}\n",
    "- &x [0, [1, *x]]\n",
])
def test_recursive_alias_is_refused(text):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="alias inside the value it names") as info:
        ModelSpec.from_yaml(text)
    assert time.perf_counter() - t0 < 1.0
    assert "\n" not in str(info.value)


def test_deep_nesting_is_refused_in_yaml_json_and_through_aliases():
    deep = 10_000
    for load in (ModelSpec.from_yaml, ModelSpec.from_json):
        with pytest.raises(ValueError, match=f"MAX_SPEC_DEPTH = {MAX_SPEC_DEPTH}"):
            load("[" * deep + "]" * deep)
    # block style, as deep as the limit allows plus one
    block = "a:\n" + "".join("  " * i + "-\n" for i in range(1, MAX_SPEC_DEPTH + 1))
    with pytest.raises(ValueError, match="MAX_SPEC_DEPTH"):
        ModelSpec.from_yaml(block)
    # each anchor nests only one level in the text, the expansion nests them all
    chain = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, MAX_SPEC_DEPTH + 2)]
    with pytest.raises(ValueError, match="MAX_SPEC_DEPTH"):
        ModelSpec.from_yaml("\n".join(chain) + "\n")
    # JSON just beyond the limit (the decoder reads it; the reader refuses it)
    nested: list = [0]
    for _ in range(MAX_SPEC_DEPTH):
        nested = [nested]
    with pytest.raises(ValueError, match=f"MAX_SPEC_DEPTH = {MAX_SPEC_DEPTH}"):
        ModelSpec.from_json(json.dumps({"gamma": nested}))


def test_json_with_too_many_values_is_refused():
    raw = json.loads(ModelSpec.example().to_json())
    raw["group_sizes"] = [1] * MAX_SPEC_NODES
    text = json.dumps(raw, separators=(",", ":"))
    assert len(text) < MAX_SPEC_BYTES
    with pytest.raises(ValueError, match=f"MAX_SPEC_NODES = {MAX_SPEC_NODES}"):
        ModelSpec.from_json(text)
    raw["group_sizes"] = [1] * 1000  # a long list of group sizes is fine
    assert ModelSpec.from_json(json.dumps(raw)).group_sizes.sizes == (1,) * 1000


def test_oversize_spec_file_and_text_are_refused(tmp_path):
    text = ModelSpec.example_yaml()
    padded = text + "#" * (MAX_SPEC_BYTES - len(text.encode()) - 1) + "\n"
    assert len(padded.encode()) == MAX_SPEC_BYTES
    at_limit = tmp_path / "at_limit.yaml"
    at_limit.write_text(padded)
    assert ModelSpec.load(at_limit) == ModelSpec.example()  # a valid spec of the largest size
    over = tmp_path / "over.yaml"
    over.write_text(padded + "#")
    with pytest.raises(ValueError, match=f"MAX_SPEC_BYTES = {MAX_SPEC_BYTES}") as info:
        ModelSpec.load(over)
    assert str(MAX_SPEC_BYTES + 1) in str(info.value) and "\n" not in str(info.value)
    big = tmp_path / "big.yaml"
    big.write_text(text + "#" * (2**20) + "\n")  # 1 MiB
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="MAX_SPEC_BYTES"):
        ModelSpec.load(big)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(ValueError, match="MAX_SPEC_BYTES"):
        ModelSpec.from_yaml(padded + "#")
    json_text = ModelSpec.example().to_json()
    with pytest.raises(ValueError, match="MAX_SPEC_BYTES"):
        ModelSpec.from_json(json_text + " " * MAX_SPEC_BYTES)
    # multi-byte characters count as their UTF-8 bytes, not as characters
    with pytest.raises(ValueError, match="MAX_SPEC_BYTES"):
        ModelSpec.from_yaml(text + "#" + "é" * (MAX_SPEC_BYTES // 2) + "\n")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_file_is_refused():
    with pytest.raises(ValueError, match="MAX_SPEC_BYTES"):
        ModelSpec.load("/dev/zero")


def test_normal_specs_still_load(tmp_path):
    spec = ModelSpec.example()
    for name in ("spec.yaml", "spec.json"):
        path = tmp_path / name
        spec.save(path)
        assert ModelSpec.load(path) == spec
    # Windows line ends read as before
    crlf = tmp_path / "crlf.yaml"
    crlf.write_bytes(ModelSpec.example_yaml().replace("\n", "\r\n").encode())
    assert ModelSpec.load(crlf) == spec
    loaded = ModelSpec.from_yaml(minimal())
    assert loaded.sigma2 == 2.0 and loaded.n_groups == 5


def test_non_utf8_file_is_a_value_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(minimal().encode() + b"# caf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        ModelSpec.load(path)


@pytest.mark.parametrize("key,text,where", [
    ("sigma2", BIG, "sigma2"),
    ("sigma2", TOO_BIG_FOR_FLOAT, "sigma2"),
    ("sigma2", "-" + BIG, "sigma2"),
    ("gamma", "{Intercept: " + BIG + ", x: 0.5}", "gamma.Intercept"),
    ("T", "[[" + BIG + "]]", "T[0][0]"),
    ("predictors", "[{kind: continuous, name: x, mean: " + BIG + "}]", "predictors[0].mean"),
    ("u_dist", "{kind: t, df: " + BIG + "}", "u_dist.df"),
    ("n_groups", BIG, "n_groups"),
    ("n_groups", str(2**63), "n_groups"),
    ("group_sizes", BIG, "group_sizes"),
    ("group_sizes", "[3, " + BIG + "]", "group_sizes.sizes[1]"),
    ("sigma2", "1" * 5000, "sigma2"),  # beyond Python's limit on reading whole numbers
], ids=lambda v: v if len(v) < 30 else f"{len(v)} chars")
def test_number_too_large_is_a_value_error_naming_the_key(key, text, where):
    with pytest.raises(ValueError) as info:
        ModelSpec.from_yaml(minimal(**{key: text}))
    message = str(info.value)
    assert repr(where) in message, message
    assert "\n" not in message


def test_number_too_large_in_json_and_in_python():
    raw = json.loads(ModelSpec.example().to_json())
    raw["sigma2"] = int(BIG)
    with pytest.raises(ValueError, match="'sigma2'"):
        ModelSpec.from_json(json.dumps(raw))
    with pytest.raises(ValueError, match="'sigma2'"):
        ModelSpec.from_dict(raw)
    with pytest.raises(ValueError, match="sigma2"):
        ModelSpec(predictors=[], gamma={"Intercept": 1.0}, random=["Intercept"], T=1.0,
                  sigma2=int(BIG))


def test_command_exits_2_with_one_line_for_a_huge_number(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text(minimal(sigma2=BIG))
    for argv in (["simulate", str(path), "--seed", "1"], ["spec", "check", str(path)]):
        status = cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2, err
        assert len(err) == 1 and "'sigma2'" in err[0] and "internal error" not in err[0]
