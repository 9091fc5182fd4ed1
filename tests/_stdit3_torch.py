"""A PyTorch STDiT3 written from Open-Sora v1.2.0's ``stdit3.py`` and ``layers/blocks.py`` (test reference).

Same module names, parameter layouts, initialisation and forward semantics as v1.2, without its
CUDA-only dependencies: xformers' block-diagonal cross-attention is written out per sample,
``rotary_embedding_torch.RotaryEmbedding`` (interleaved pairs, theta 1e4, a ``freqs`` parameter) and
timm's ``Mlp`` are re-implemented. ``save_pretrained`` / ``from_pretrained`` mirror the HF layout
(``config.json`` + ``model.safetensors``) with a strict ``load_state_dict``.
It also holds a transcription of v1.2's rectified-flow scheduler (timestep transform, sampler).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import nn

CONFIG_DEFAULTS = dict(input_size=[None, None, None], input_sq_size=512, in_channels=4, patch_size=[1, 2, 2],
                       hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1,
                       pred_sigma=True, drop_path=0.0, caption_channels=4096, model_max_length=300, qk_norm=True,
                       enable_flash_attn=False, enable_layernorm_kernel=False, enable_sequence_parallelism=False,
                       only_train_temporal=False, freeze_y_embedder=False, skip_y_embedder=False)


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, h):
        dtype = h.dtype
        h = h.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


class RotaryEmbedding(nn.Module):
    """rotary_embedding_torch defaults: pixel freqs off, theta 1e4, interleaved pairs, seq along dim -2."""

    def __init__(self, dim, theta=10000):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate_queries_or_keys(self, t):
        n = t.shape[-2]
        pos = torch.arange(n, device=t.device, dtype=t.dtype)
        f = torch.einsum("i,j->ij", pos.type(self.freqs.dtype), self.freqs)
        f = f.repeat_interleave(2, dim=-1)  # "... n -> ... (n r)", r=2
        pairs = t.reshape(*t.shape[:-1], -1, 2)
        x1, x2 = pairs.unbind(-1)
        rot = torch.stack((-x2, x1), dim=-1).reshape(t.shape)
        return (t.float() * f.cos() + rot.float() * f.sin()).type(t.dtype)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qk_norm=False, rope=None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = LlamaRMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = LlamaRMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.rope = rope is not None
        if self.rope:
            self.rotary_emb = rope

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)  # norm first, then rotate
        if self.rope:
            q, k = self.rotary_emb(q), self.rotary_emb(k)
        dtype = q.dtype
        attn = ((q * self.scale) @ k.transpose(-2, -1)).to(torch.float32).softmax(dim=-1).to(dtype)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class MultiHeadCrossAttention(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.kv_linear = nn.Linear(d_model, d_model * 2)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, cond, y_lens):
        """x [B, N, C]; cond packed [1, sum(y_lens), C]; BlockDiagonalMask.from_seqlens([N] * B, y_lens)."""
        B, N, C = x.shape
        q = self.q_linear(x).view(1, -1, self.num_heads, self.head_dim)
        k, v = self.kv_linear(cond).view(1, -1, 2, self.num_heads, self.head_dim).unbind(2)
        outs, start = [], 0
        for b in range(B):
            qb = q[0, b * N:(b + 1) * N].transpose(0, 1)  # [H, N, D]
            kb = k[0, start:start + y_lens[b]].transpose(0, 1)
            vb = v[0, start:start + y_lens[b]].transpose(0, 1)
            a = ((qb * self.head_dim**-0.5) @ kb.transpose(-2, -1)).float().softmax(-1).to(qb.dtype)
            outs.append((a @ vb).transpose(0, 1).reshape(N, C))
            start += y_lens[b]
        return self.proj(torch.cat(outs).view(B, N, C))


class Mlp(nn.Module):  # timm Mlp(act_layer=GELU(tanh), drop=0)
    def __init__(self, in_features, hidden_features, out_features=None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def t2i_modulate(x, shift, scale):
    return x * (1 + scale) + shift


def t_mask_select(x_mask, x, masked_x, T, S):
    x = rearrange(x, "B (T S) C -> B T S C", T=T, S=S)
    masked_x = rearrange(masked_x, "B (T S) C -> B T S C", T=T, S=S)
    return rearrange(torch.where(x_mask[:, :, None, None], x, masked_x), "B T S C -> B (T S) C")


class STDiT3Block(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, rope=None, qk_norm=False, temporal=False):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm, rope=rope)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(self, x, y, t, mask=None, x_mask=None, t0=None, T=None, S=None):
        B = x.shape[0]
        sh1, sc1, g1, sh2, sc2, g2 = (self.scale_shift_table[None] + t.reshape(B, 6, -1)).chunk(6, dim=1)
        if x_mask is not None:
            sh1z, sc1z, g1z, sh2z, sc2z, g2z = (self.scale_shift_table[None] + t0.reshape(B, 6, -1)).chunk(6, dim=1)
        x_m = t2i_modulate(self.norm1(x), sh1, sc1)
        if x_mask is not None:
            x_m = t_mask_select(x_mask, x_m, t2i_modulate(self.norm1(x), sh1z, sc1z), T, S)
        if self.temporal:
            x_m = rearrange(x_m, "B (T S) C -> (B S) T C", T=T, S=S)
            x_m = rearrange(self.attn(x_m), "(B S) T C -> B (T S) C", T=T, S=S)
        else:
            x_m = rearrange(x_m, "B (T S) C -> (B T) S C", T=T, S=S)
            x_m = rearrange(self.attn(x_m), "(B T) S C -> B (T S) C", T=T, S=S)
        x_m_s = g1 * x_m
        if x_mask is not None:
            x_m_s = t_mask_select(x_mask, x_m_s, g1z * x_m, T, S)
        x = x + x_m_s
        x = x + self.cross_attn(x, y, mask)
        x_m = t2i_modulate(self.norm2(x), sh2, sc2)
        if x_mask is not None:
            x_m = t_mask_select(x_mask, x_m, t2i_modulate(self.norm2(x), sh2z, sc2z), T, S)
        x_m = self.mlp(x_m)
        x_m_s = g2 * x_m
        if x_mask is not None:
            x_m_s = t_mask_select(x_mask, x_m_s, g2z * x_m, T, S)
        return x + x_m_s


class T2IFinalLayer(nn.Module):
    def __init__(self, hidden_size, num_patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x, t, x_mask=None, t0=None, T=None, S=None):
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        x = t2i_modulate(self.norm_final(x), shift, scale)
        if x_mask is not None:
            shift0, scale0 = (self.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
            x_zero = t2i_modulate(self.norm_final(x), shift0, scale0)  # x is already modulated here (as v1.2)
            x = t_mask_select(x_mask, x, x_zero, T, S)
        return self.linear(x)


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t, dtype):
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class SizeEmbedder(TimestepEmbedder):
    def forward(self, s, bs):
        if s.ndim == 1:
            s = s[:, None]
        if s.shape[0] != bs:
            s = s.repeat(bs // s.shape[0], 1)
        b, dims = s.shape
        s_emb = self.mlp(timestep_embedding(rearrange(s, "b d -> (b d)"), self.frequency_embedding_size)
                         .to(self.mlp[0].weight.dtype))
        return rearrange(s_emb, "(b d) d2 -> b (d d2)", b=b, d=dims)


class CaptionEmbedder(nn.Module):
    def __init__(self, in_channels, hidden_size, token_num):
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)

    def forward(self, caption, force_drop_ids=None):
        if force_drop_ids is not None:
            caption = torch.where((force_drop_ids == 1)[:, None, None, None], self.y_embedding, caption)
        return self.y_proj(caption)


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        _, _, D, H, W = x.size()
        p = self.patch_size
        if W % p[2]:
            x = nn.functional.pad(x, (0, p[2] - W % p[2]))
        if H % p[1]:
            x = nn.functional.pad(x, (0, 0, 0, p[1] - H % p[1]))
        if D % p[0]:
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, p[0] - D % p[0]))
        return self.proj(x).flatten(2).transpose(1, 2)


class PositionEmbedding2D(nn.Module):
    def __init__(self, dim):
        super().__init__()
        half_dim = dim // 2
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, half_dim, 2).float() / half_dim)),
                             persistent=False)

    def _sin_cos(self, t):
        out = torch.einsum("i,d->id", t, self.inv_freq)
        return torch.cat((torch.sin(out), torch.cos(out)), dim=-1)

    def forward(self, x, h, w, scale=1.0, base_size=None):
        grid_h = torch.arange(h) / scale
        grid_w = torch.arange(w) / scale
        if base_size is not None:
            grid_h *= base_size / h
            grid_w *= base_size / w
        grid_h, grid_w = torch.meshgrid(grid_w, grid_h, indexing="ij")  # w goes first
        grid_h, grid_w = grid_h.t().reshape(-1), grid_w.t().reshape(-1)
        return torch.cat([self._sin_cos(grid_h), self._sin_cos(grid_w)], dim=-1).unsqueeze(0).to(x.dtype)


class STDiT3(nn.Module):
    def __init__(self, **config):
        super().__init__()
        c = {**CONFIG_DEFAULTS, **config}
        self.config = c
        self.out_channels = c["in_channels"] * 2 if c["pred_sigma"] else c["in_channels"]
        self.hidden_size, self.num_heads = c["hidden_size"], c["num_heads"]
        self.patch_size, self.input_sq_size = tuple(c["patch_size"]), c["input_sq_size"]
        C = self.hidden_size
        self.pos_embed = PositionEmbedding2D(C)
        self.rope = RotaryEmbedding(C // self.num_heads)
        self.x_embedder = PatchEmbed3D(self.patch_size, c["in_channels"], C)
        self.t_embedder = TimestepEmbedder(C)
        self.fps_embedder = SizeEmbedder(C)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C, bias=True))
        self.y_embedder = CaptionEmbedder(c["caption_channels"], C, c["model_max_length"])
        self.spatial_blocks = nn.ModuleList([STDiT3Block(C, self.num_heads, c["mlp_ratio"], qk_norm=c["qk_norm"])
                                             for _ in range(c["depth"])])
        self.temporal_blocks = nn.ModuleList([
            STDiT3Block(C, self.num_heads, c["mlp_ratio"], qk_norm=c["qk_norm"], temporal=True,
                        rope=self.rope.rotate_queries_or_keys) for _ in range(c["depth"])])
        self.final_layer = T2IFinalLayer(C, int(np.prod(self.patch_size)), self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        nn.init.normal_(self.fps_embedder.mlp[0].weight, std=0.02)
        nn.init.constant_(self.fps_embedder.mlp[0].bias, 0)
        nn.init.constant_(self.fps_embedder.mlp[2].weight, 0)
        nn.init.constant_(self.fps_embedder.mlp[2].bias, 0)
        for block in self.temporal_blocks:
            nn.init.constant_(block.attn.proj.weight, 0)
            nn.init.constant_(block.cross_attn.proj.weight, 0)
            nn.init.constant_(block.mlp.fc2.weight, 0)

    def get_dynamic_size(self, x):
        _, _, T, H, W = x.size()
        p = self.patch_size
        return (-(-T // p[0]), -(-H // p[1]), -(-W // p[2]))

    def encode_text(self, y, mask=None, force_drop_ids=None):
        y = self.y_embedder(y, force_drop_ids)  # [B, 1, L, C]
        if mask is not None:
            if mask.shape[0] != y.shape[0]:
                mask = mask.repeat(y.shape[0] // mask.shape[0], 1)
            mask = mask.squeeze(1).squeeze(1)
            y = y.squeeze(1).masked_select(mask.unsqueeze(-1) != 0).view(1, -1, self.hidden_size)
            y_lens = mask.sum(dim=1).tolist()
        else:
            y_lens = [y.shape[2]] * y.shape[0]
            y = y.squeeze(1).view(1, -1, self.hidden_size)
        return y, y_lens

    def forward(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None,
                force_drop_ids=None, **kwargs):
        dtype = self.x_embedder.proj.weight.dtype
        B = x.size(0)
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        _, _, Tx, Hx, Wx = x.size()
        T, H, W = self.get_dynamic_size(x)
        S = H * W
        base_size = round(S**0.5)
        scale = (height[0].item() * width[0].item()) ** 0.5 / self.input_sq_size
        pos_emb = self.pos_embed(x, H, W, scale=scale, base_size=base_size)

        t = self.t_embedder(timestep, dtype=x.dtype)
        fps = self.fps_embedder(fps.unsqueeze(1), B)
        t = t + fps
        t_mlp = self.t_block(t)
        t0 = t0_mlp = None
        if x_mask is not None:
            t0 = self.t_embedder(torch.zeros_like(timestep), dtype=x.dtype) + fps
            t0_mlp = self.t_block(t0)

        y, y_lens = self.encode_text(y, mask, force_drop_ids)
        x = rearrange(self.x_embedder(x), "B (T S) C -> B T S C", T=T, S=S)
        x = rearrange(x + pos_emb, "B T S C -> B (T S) C", T=T, S=S)
        for spatial_block, temporal_block in zip(self.spatial_blocks, self.temporal_blocks, strict=True):
            x = spatial_block(x, y, t_mlp, y_lens, x_mask, t0_mlp, T, S)
            x = temporal_block(x, y, t_mlp, y_lens, x_mask, t0_mlp, T, S)
        x = self.final_layer(x, t, x_mask, t0, T, S)
        p = self.patch_size
        x = rearrange(x, "B (N_t N_h N_w) (T_p H_p W_p C_out) -> B C_out (N_t T_p) (N_h H_p) (N_w W_p)",
                      N_t=T, N_h=H, N_w=W, T_p=p[0], H_p=p[1], W_p=p[2], C_out=self.out_channels)
        return x[:, :, :Tx, :Hx, :Wx].to(torch.float32)

    # --- the Hugging Face directory layout (PreTrainedModel.save_pretrained / from_pretrained, strict) ---

    def save_pretrained(self, path):
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = {**self.config, "architectures": ["STDiT3"], "model_type": "STDiT3", "torch_dtype": "float32"}
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"),
                  metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path):
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        cfg = {k: v for k, v in cfg.items() if k in CONFIG_DEFAULTS}
        model = cls(**cfg)
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        return model


def randomize_(model: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Add noise to every parameter and buffer except ``rope.freqs``, so zero-initialised layers are non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name == "rope.freqs" or name.endswith("inv_freq"):
                continue
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


# --------------------------------------------------------------------------------------
# v1.2's rectified flow (opensora/schedulers/rf), transcribed
# --------------------------------------------------------------------------------------


def timestep_transform(t, model_kwargs, base_resolution=512 * 512, base_num_frames=1, scale=1.0,
                       num_timesteps=1):
    t = t / num_timesteps
    resolution = model_kwargs["height"] * model_kwargs["width"]
    ratio_space = (resolution / base_resolution).sqrt()
    if model_kwargs["num_frames"][0] == 1:
        num_frames = torch.ones_like(model_kwargs["num_frames"])
    else:
        num_frames = model_kwargs["num_frames"] // 17 * 5
    ratio_time = (num_frames / base_num_frames).sqrt()
    ratio = ratio_space * ratio_time * scale
    new_t = ratio * t / (1 + (ratio - 1) * t)
    return new_t * num_timesteps


def model_kwargs(batch, height, width, num_frames, fps, dtype):
    """inference_utils.prepare_multi_resolution_info("STDiT2", ...): every entry in the model dtype."""
    def full(v):
        return torch.tensor([v], dtype=dtype).repeat(batch)

    return dict(height=full(height), width=full(width), num_frames=full(num_frames), fps=full(fps))


def rflow_timesteps(num_sampling_steps, batch, additional_args, num_timesteps=1000, use_timestep_transform=True):
    ts = [(1.0 - i / num_sampling_steps) * num_timesteps for i in range(num_sampling_steps)]
    ts = [torch.tensor([t] * batch) for t in ts]
    if use_timestep_transform:
        ts = [timestep_transform(t, additional_args, num_timesteps=num_timesteps) for t in ts]
    return ts


def add_noise(x0, noise, t, num_timesteps=1000):
    tp = (1 - t.float() / num_timesteps)[:, None, None, None, None]
    return tp * x0 + (1 - tp) * noise


def rflow_sample(model_fn, z, y, y_null, model_args, num_sampling_steps, guidance_scale, mask=None,
                 num_timesteps=1000, noise_fn=torch.randn_like):
    """RFLOW.sample with the text encoder already applied: model_fn(z, t, y=..., x_mask=..., **model_args)."""
    args = dict(model_args, y=torch.cat([y, y_null], 0))
    timesteps = rflow_timesteps(num_sampling_steps, z.shape[0], model_args, num_timesteps)
    if mask is not None:
        noise_added = torch.zeros_like(mask, dtype=torch.bool) | (mask == 1)
    for i, t in enumerate(timesteps):
        if mask is not None:
            mask_t = mask * num_timesteps
            x0 = z.clone()
            x_noise = add_noise(x0, noise_fn(x0), t, num_timesteps)
            mask_t_upper = mask_t >= t.unsqueeze(1)
            args["x_mask"] = mask_t_upper.repeat(2, 1)
            mask_add_noise = mask_t_upper & ~noise_added
            z = torch.where(mask_add_noise[:, None, :, None, None], x_noise, x0)
            noise_added = mask_t_upper
        z_in, tt = torch.cat([z, z], 0), torch.cat([t, t], 0)
        pred = model_fn(z_in, tt, **args).chunk(2, dim=1)[0]
        pred_cond, pred_uncond = pred.chunk(2, dim=0)
        v_pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        dt = timesteps[i] - timesteps[i + 1] if i < len(timesteps) - 1 else timesteps[i]
        z = z + v_pred * (dt / num_timesteps)[:, None, None, None, None]
        if mask is not None:
            z = torch.where(mask_t_upper[:, None, :, None, None], z, x0)
    return z


def meta_state_dict_shapes(**config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the published state_dict, from the reference built on the meta device."""
    with torch.device("meta"):
        model = STDiT3(**config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
