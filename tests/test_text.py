"""Text encoders: T5 / CLIP parity with transformers, loading (sharded, onto a mesh, bad input),
tokenizers, caption cleaning, the conditioner with its disk cache, and the ``encode_text`` CLI.

Every fixture is built here (tiny random HF models, an in-process sentencepiece model); nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax.models.stdit import count_params
from vidjax.models.text.clip import load_clip_text_encoder
from vidjax.models.text.hf_weights import CheckpointError
from vidjax.models.text.t5 import abstract_t5_encoder, load_t5_encoder, relative_position_buckets, t5_config
from vidjax.models.text.tokenize import TokenizerError, clean_caption, load_text_tokenizer, text_preprocessing
from vidjax.parallel.rules import MESH_AXES

TOL = 1e-5  # relative error: max |ours - torch| / max |torch|
WORDS = ("a red blue green square circle triangle moves slowly quickly left right up down on the black white "
         "background small large bouncing spinning").split()


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def forward(model, ids, mask):
    """One jitted call (far cheaper than op-by-op on CPU): split, merge inside jit."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda st, i, m: nnx.merge(graphdef, st)(i, m))(state, jnp.asarray(ids), jnp.asarray(mask))


def padded_batch(vocab: int, lengths=(12, 7, 3), total: int = 12, seed: int = 0):
    """ids / mask [B, total] with right padding (pad id 0), ids in [3, vocab)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (len(lengths), total))
    mask = np.arange(total)[None] < np.array(lengths)[:, None]
    return np.where(mask, ids, 0).astype(np.int64), mask.astype(np.int64)


# --------------------------------------------------------------------------------------
# fixtures: tiny HF checkpoints and tokenizers
# --------------------------------------------------------------------------------------


def _hf_t5_config(ff: str):
    from transformers import T5Config

    return T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj=ff,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)


@pytest.fixture(scope="module")
def t5_tokenizer_dir(tmp_path_factory):
    """A sentencepiece unigram model trained in-process, saved as a ``T5TokenizerFast`` directory."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    rng = random.Random(0)
    captions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(500)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(captions), model_writer=buf, vocab_size=64,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    src, out = tmp_path_factory.mktemp("spm"), tmp_path_factory.mktemp("t5tok")
    (src / "spiece.model").write_bytes(buf.getvalue())
    T5TokenizerFast.from_pretrained(str(src), extra_ids=0).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module", params=["relu", "gated-gelu"])
def hf_t5(request, tmp_path_factory, t5_tokenizer_dir):
    """(directory, torch model): a tiny random ``T5EncoderModel`` (v1.0 relu / v1.1 gated-gelu) + tokenizer."""
    import torch
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(_hf_t5_config(request.param)).eval()
    d = tmp_path_factory.mktemp(f"t5_{request.param}")
    model.save_pretrained(str(d), safe_serialization=True)
    for f in t5_tokenizer_dir.iterdir():
        shutil.copy(f, d)
    return d, model


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """(directory, torch model): a tiny random ``CLIPTextModel`` plus a tiny BPE ``CLIPTokenizerFast``."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz!.,"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in letters:
        vocab[c] = len(vocab)
    for c in letters:
        vocab[c + "</w>"] = len(vocab)
    merges = [("r", "e"), ("re", "d</w>"), ("t", "h"), ("th", "e</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    d = tmp_path_factory.mktemp("clip")
    CLIPTokenizerFast(vocab=vocab, merges=merges).save_pretrained(str(d))
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)
    torch.manual_seed(0)
    model = CLIPTextModel(cfg).eval()
    model.save_pretrained(str(d), safe_serialization=True)
    return d, model


# --------------------------------------------------------------------------------------
# parity with transformers (fp32, padded batches)
# --------------------------------------------------------------------------------------


@pytest.mark.torch
def test_relative_position_buckets_match_transformers():
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    for num_buckets, max_distance in [(32, 128), (8, 16), (64, 256)]:
        ours = relative_position_buckets(300, 300, num_buckets, max_distance)
        rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
        ref = T5Attention._relative_position_bucket(rel, True, num_buckets, max_distance).numpy()
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.torch
def test_t5_encoder_matches_transformers(hf_t5):
    import torch

    d, model = hf_t5
    ids, mask = padded_batch(64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    err = rel_err(forward(load_t5_encoder(d), ids, mask), ref)
    print(f"T5 {model.config.feed_forward_proj}: relative error {err:.2e}")
    assert err <= TOL
    if model.config.is_gated_act:  # v1.1, Open-Sora's: bf16 compute with fp32 parameters stays close
        y16 = forward(load_t5_encoder(d, dtype="bfloat16"), ids, mask)
        assert y16.dtype == jnp.bfloat16 and rel_err(y16, ref) < 5e-2


@pytest.mark.torch
def test_clip_text_encoder_matches_transformers(hf_clip):
    import torch

    d, model = hf_clip
    ids, mask = padded_batch(model.config.vocab_size, lengths=(12, 7, 3))
    ids[:, 0] = 0  # <|startoftext|>
    for b, n in enumerate((12, 7, 3)):
        ids[b, n - 1] = 1  # <|endoftext|> ends each caption; padding (id 1 here) is EOS too
        ids[b, n:] = 1
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    y, pooled = forward(load_clip_text_encoder(d), ids, mask)
    err_y, err_p = rel_err(y, out.last_hidden_state.numpy()), rel_err(pooled, out.pooler_output.numpy())
    print(f"CLIP: relative error hidden {err_y:.2e}, pooled {err_p:.2e}")
    assert err_y <= TOL and err_p <= TOL


@pytest.mark.torch
def test_t5_loads_sharded_checkpoint_onto_mesh(tmp_path, devices):
    """Shards + index JSON, each tensor placed straight onto a (fsdp 4 x tensor 2) mesh."""
    import torch
    from transformers import T5EncoderModel

    torch.manual_seed(1)
    model = T5EncoderModel(_hf_t5_config("gated-gelu")).eval()
    model.save_pretrained(str(tmp_path), safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2

    mesh = jax.make_mesh((1, 4, 1, 2), MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 4)
    ours = load_t5_encoder(tmp_path, mesh=mesh)
    q = ours.blocks[1].self_attn.q.kernel[...]  # [d_model 32, inner 32] on ("embed", "heads")
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert {s.data.shape for s in q.addressable_shards} == {(8, 16)}  # no device holds the whole tensor
    assert ours.shared.embedding[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")

    ids, mask = padded_batch(64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    with jax.set_mesh(mesh):
        y = jax.jit(lambda m, i, k: m(i, k))(ours, jnp.asarray(ids), jnp.asarray(mask))
    assert rel_err(y, ref) <= TOL


@pytest.mark.torch
def test_t5_loads_bf16_checkpoint(tmp_path):
    """bf16 safetensors (how T5-XXL ships) are read without torch, into fp32 or bf16 parameters."""
    import torch
    from transformers import T5EncoderModel

    torch.manual_seed(2)
    model = T5EncoderModel(_hf_t5_config("gated-gelu")).to(torch.bfloat16)
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    ref = model.encoder.block[1].layer[1].DenseReluDense.wi_1.weight.detach().float().numpy().T
    for param_dtype in ("float32", "bfloat16"):
        kernel = load_t5_encoder(tmp_path, param_dtype=param_dtype).blocks[1].ff.wi_1.kernel[...]
        assert kernel.dtype == jnp.dtype(param_dtype)
        np.testing.assert_array_equal(np.asarray(kernel, np.float32), ref)


@pytest.mark.torch
def test_clip_loads_full_clipmodel_layout(hf_clip, tmp_path):
    """A ``CLIPModel`` checkpoint: nested ``text_config``, ``text_model.`` prefix, vision tower and the
    old ``position_ids`` buffer (ignored)."""
    from safetensors.numpy import load_file, save_file

    d, model = hf_clip
    tensors = {f"text_model.{k}": v for k, v in load_file(str(d / "model.safetensors")).items()}
    tensors["text_model.embeddings.position_ids"] = np.arange(16)[None]
    tensors["vision_model.embeddings.class_embedding"] = np.zeros(8, np.float32)
    tensors["logit_scale"] = np.ones((), np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    text_config = json.loads((d / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(model_type="clip", text_config=text_config)))
    ours = load_clip_text_encoder(tmp_path)
    np.testing.assert_array_equal(np.asarray(ours.layers[1].mlp.fc1.kernel[...]),
                                  model.encoder.layers[1].mlp.fc1.weight.detach().numpy().T)
    np.testing.assert_array_equal(np.asarray(ours.final_layer_norm.bias[...]),
                                  tensors["text_model.final_layer_norm.bias"])


# --------------------------------------------------------------------------------------
# size
# --------------------------------------------------------------------------------------

# T5 v1.1 XXL encoder: embedding 32128·4096 + 24 blocks × (4·4096² attention + 3·4096·10240 gated FFN
# + 2·4096 norms) + 32·64 relative bias + 4096 final norm (see vidjax/models/text/t5.py).
T5_XXL_ENCODER_PARAMS = 4_762_310_656


def test_t5_xxl_parameter_count():
    n = count_params(abstract_t5_encoder(t5_config("t5-v1_1-xxl")))
    assert n == 32128 * 4096 + 24 * (4 * 4096**2 + 3 * 4096 * 10240 + 2 * 4096) + 32 * 64 + 4096
    assert n == T5_XXL_ENCODER_PARAMS


@pytest.mark.torch
def test_t5_xxl_parameter_count_matches_transformers():
    import torch
    from transformers import T5Config, T5EncoderModel

    xxl = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   feed_forward_proj="gated-gelu")
    with torch.device("meta"):  # shapes only
        assert T5EncoderModel(xxl).num_parameters() == T5_XXL_ENCODER_PARAMS


# --------------------------------------------------------------------------------------
# bad input: one line naming the file and the first mismatch
# --------------------------------------------------------------------------------------


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.torch
def test_config_weight_mismatch_errors(hf_t5, hf_clip, tmp_path):
    d, model = hf_t5
    gated = model.config.is_gated_act
    ffn = "wi_0" if gated else "wi"
    cases = [
        (_edit_config(d, tmp_path / "dff", d_ff=64), "model.safetensors",
         f"encoder.block.0.layer.1.DenseReluDense.{ffn}.weight has shape [48, 32] but the config implies [64, 32]"),
        (_edit_config(d, tmp_path / "layers", num_layers=3), "model.safetensors",
         "missing key encoder.block.2.layer.0.layer_norm.weight (shape [32])"),
        (_edit_config(d, tmp_path / "ffproj", feed_forward_proj="relu" if gated else "gated-gelu"),
         "model.safetensors", "unexpected key encoder.block.0.layer.1.DenseReluDense."),
        (_edit_config(hf_clip[0], tmp_path / "clip", intermediate_size=40), "model.safetensors",
         "encoder.layers.0.mlp.fc1.bias has shape [37] but the config implies [40]"),
    ]
    for path, file, message in cases:
        loader = load_clip_text_encoder if path.name == "clip" else load_t5_encoder
        with pytest.raises(CheckpointError) as e:
            loader(path)
        text = str(e.value)
        assert "\n" not in text and str(path / file) in text and message in text, text
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_t5_encoder(_weights_only(d, tmp_path / "noconfig"))


def _weights_only(src, dst):
    dst.mkdir()
    shutil.copy(src / "model.safetensors", dst)
    return dst


def test_missing_tokenizer_directory(tmp_path):
    with pytest.raises(TokenizerError) as e:
        load_text_tokenizer(tmp_path / "nope", "t5", 16)
    assert str(e.value) == f"{tmp_path / 'nope'}: tokenizer directory not found"
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        load_text_tokenizer(tmp_path, "t5", 16)


# --------------------------------------------------------------------------------------
# tokenizers and caption cleaning
# --------------------------------------------------------------------------------------


@pytest.mark.torch
def test_t5_tokenizer_matches_transformers(t5_tokenizer_dir):
    from transformers import T5TokenizerFast

    texts = ["a red square moves left", "blue circle", "", "the small green triangle spinning on a white "
             "background moves quickly up and down and left and right"]
    ours = load_text_tokenizer(t5_tokenizer_dir, "t5", 16, clean=False)
    ids, mask = ours(texts)
    ref = T5TokenizerFast.from_pretrained(str(t5_tokenizer_dir))(texts, padding="max_length", max_length=16,
                                                                 truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
    assert ids.shape == (4, 16) and ids.dtype == np.int32 and mask.dtype == bool
    assert ids[3, -1] == 1 and mask[3].all()  # truncated, still ends with </s>
    assert (ids[~mask] == 0).all() and mask[2].sum() == 1  # padding id 0; "" is just </s>
    # cleaning is on by default for T5 and happens before tokenization
    cleaning = load_text_tokenizer(t5_tokenizer_dir, "t5", 16)
    assert cleaning.clean
    np.testing.assert_array_equal(cleaning(["A RED square!!! http://x.com"])[0], ours(["a red square!!!"])[0])


CAPTIONS = [  # (raw, expected after Open-Sora's two passes), expected from the ftfy + bs4 reference
    ("A red square moves LEFT across a black background.", "a red square moves left across a black background."),
    ("Check out https://example.com/video?id=3 and www.foo.org now!", "check out ?id=3 and now!"),
    ('<p>A <b>cat</b> on a mat</p>&amp; a dog &quot;barks&quot;', 'a cat on a mat a dog "barks"'),
    ("Photo by @john_doe123 — “golden hour” at the beach…", 'photo by - "golden hour" at the beach…'),
    ("this-is-my-cute-cat_video_clip", "this is my cute cat video clip"),
    ("A cat 猫 sitting on a 桌子 table", "a cat sitting on a table"),
    ("'Quoted caption'", "quoted caption"),
    ("Item #123 and #123456, ref 1234567 at 192.168.0.1", "item and , ref at"),
    ("jc6640 and jc6640vc and 6640vc231 are product codes, page 12", "and and are product codes"),
    ("A man walks.The sun sets,slowly", "a man walks. the sun sets, slowly"),
    ("ｆｕｌｌ ｗｉｄｔｈ text with ﬁne ligatures", "full width text with fine ligatures"),
    ("don’t stop — it’s a ‘test’", "don't stop - it's a 'test"),
    ("hello%20world+again", "hello world again"),
    ("a <person> rides a bike \\n at dusk", "a person rides a bike at dusk"),
    ("x < y and y > z", "x < y and y > z"),
    ("a photo of a cat&nbsp;in the snow", "a photo of a cat in the snow"),
    ("the dogâ€™s ball", "the dog†s ball"),
    ("Tom &amp; Jerry &lt;3", "tom jerry <3"),
    ("<script>var x=1;</script>visible text<!-- comment -->", "visible text"),
    ('"""AUSVERKAUFT""" ***SALE*** #summer', '"ausverkauft" sale summer'),
    ("A-B testing, v2.0 release: see docs.python.org/3/ for more", "a-b testing, v2.0 release: see for more"),
    ("John's 3.5x2.5 inch photo, page 3", "john's 3 5 inch photo"),
    ("100% cotton T-shirt (size M) [new] {promo} | best", "100% cotton t-shirt size m new promo best"),
    ("Ünïcödé ÀÉÎÕÜ characters stay", "ünïcödé àéîõü characters stay"),
    (": leading colon and trailing plus+", "leading colon and trailing plus"),
    ("line one\r\nline two\ttabbed", "line one line two tabbed"),
    ("   ", ""),
    (".hidden", ""),
]


@pytest.mark.parametrize("raw,expected", CAPTIONS)
def test_clean_caption(raw, expected):
    assert text_preprocessing(raw) == expected
    assert text_preprocessing(raw, clean=False) == raw


def test_clean_caption_single_pass_differs_from_two():
    raw = "FREE SHIPPING worldwide!!! Click for details: IMG_1234.jpg 1920x1080"
    assert clean_caption(raw) == "worldwide!!! :"
    assert text_preprocessing(raw) == "worldwide!!!"


# --------------------------------------------------------------------------------------
# conditioner and CLI
# --------------------------------------------------------------------------------------

PROMPTS = ["a red square moves left", "the blue circle", "a green triangle spinning on the black background"]


@pytest.mark.torch
@pytest.mark.parametrize("hf_t5", ["relu"], indirect=True)
def test_conditioner_t5_with_disk_cache(hf_t5, tmp_path):
    import torch
    from transformers import T5TokenizerFast

    from vidjax.models.text.conditioner import build_text_conditioner

    d, model = hf_t5
    cfg = dict(encoder="t5", path=str(d), max_length=16, cache_dir=str(tmp_path), batch_size=2)
    cond = build_text_conditioner(cfg)
    y, mask, pooled = cond.encode(PROMPTS)
    assert y.shape == (3, 16, 32) and mask.shape == (3, 16) and pooled is None and cond.dim == 32
    tok = T5TokenizerFast.from_pretrained(str(d))(PROMPTS, padding="max_length", max_length=16, truncation=True,
                                                  return_tensors="pt")
    with torch.no_grad():
        ref = model(**tok).last_hidden_state.numpy()
    np.testing.assert_array_equal(np.asarray(mask), tok["attention_mask"].numpy().astype(bool))
    assert rel_err(y, ref) <= TOL
    assert len(list(tmp_path.rglob("*.npz"))) == 3
    # second call: served from disk (the encoder is gone), same values, new prompt order
    cond.encoder = None
    y2, mask2, _ = cond.encode(PROMPTS[::-1])
    np.testing.assert_array_equal(np.asarray(y2), np.asarray(y)[::-1])
    np.testing.assert_array_equal(np.asarray(mask2), np.asarray(mask)[::-1])


@pytest.fixture(scope="module")
def clip_prompts_ref(hf_clip):
    """transformers' ids, mask, last hidden state and pooled output for ``PROMPTS`` (16 tokens)."""
    import torch
    from transformers import CLIPTokenizerFast

    d, model = hf_clip
    tok = CLIPTokenizerFast.from_pretrained(str(d))(PROMPTS, padding="max_length", max_length=16, truncation=True,
                                                    return_tensors="pt")
    with torch.no_grad():
        out = model(**tok)
    return tok["attention_mask"].numpy().astype(bool), out.last_hidden_state.numpy(), out.pooler_output.numpy()


@pytest.mark.torch
def test_conditioner_clip_pooled(hf_clip, clip_prompts_ref):
    from vidjax.models.text.conditioner import build_text_conditioner

    cond = build_text_conditioner({"text": dict(encoder="clip", path=str(hf_clip[0]), max_length=16)})
    y, mask, pooled = cond.encode(PROMPTS)
    assert y.shape == (3, 16, 32) and pooled.shape == (3, 32) and cond.pooled_dim == 32
    ref_mask, ref_y, ref_pooled = clip_prompts_ref
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    assert rel_err(y, ref_y) <= TOL and rel_err(pooled, ref_pooled) <= TOL


def test_conditioner_trainable():
    from ml_collections import ConfigDict

    from vidjax.models.text.conditioner import build_text_conditioner

    text = ConfigDict(dict(encoder="trainable", vocab_size=64, max_length=8, dim=16))
    cond = build_text_conditioner(ConfigDict(dict(text=text)))
    y, mask, pooled = cond.encode(PROMPTS)
    assert y.shape == (3, 8, 16) and mask.shape == (3, 8) and pooled is None
    assert mask[1].sum() == 3 and float(jnp.abs(y[1, 3:]).max()) == 0.0
    with pytest.raises(ValueError, match="cannot be cached"):
        build_text_conditioner(dict(encoder="trainable", vocab_size=64, max_length=8, dim=16, cache_dir="/tmp/x"))
    with pytest.raises(ValueError, match="text.encoder='bert'"):
        build_text_conditioner(dict(encoder="bert"))


@pytest.mark.torch
def test_encode_text_cli(hf_clip, clip_prompts_ref, tmp_path, capsys):
    from vidjax.encode_text import main

    d, _ = hf_clip
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "emb.npz"
    assert main(["--encoder", str(d), "--prompts", str(prompts), "--out", str(out), "--max-length", "16",
                 "--batch-size", "3"]) == 0
    ref_mask, ref_y, ref_pooled = clip_prompts_ref
    with np.load(out) as f:
        assert f["y"].shape == (3, 16, 32) and f["pooled"].shape == (3, 32) and list(f["prompts"]) == PROMPTS
        np.testing.assert_array_equal(f["mask"], ref_mask)
        assert rel_err(f["y"], ref_y) <= TOL and rel_err(f["pooled"], ref_pooled) <= TOL
    from vidjax import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.run("vidjax.encode_text", main, ["--encoder", str(tmp_path / "missing"), "--prompts", str(prompts),
                                             "--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning: ")]  # blank line
    assert e.value.code == 2 and len(err) == 1 and "missing" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--prompts" in capsys.readouterr().out
