"""The SmolLM2-135M shape as a transformers `LlamaConfig`, shared by the benchmark peers
(bench/*_peer.py; the shape of worker/benches/common/mod.rs `smollm2_135m_shape`): hidden 576,
30 layers, 9 heads / 3 KV heads, MLP 1536, vocabulary 49152, tied embeddings."""


def smollm2_config(**overrides):
    """The config, with `overrides` (e.g. `num_labels=1`, other special token ids) applied."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=True,
        attention_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)
