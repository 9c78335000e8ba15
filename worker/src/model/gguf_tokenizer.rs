//! The tokenizer a GGUF file's `tokenizer.*` metadata describes, as the Hugging Face
//! `tokenizer.json` and `tokenizer_config.json` values transformers (5.x) builds from it with
//! `AutoTokenizer.from_pretrained(dir, gguf_file=..)`. Only `tokenizer.ggml.model = gpt2`
//! (byte-level BPE) is built:
//! - vocabulary: `tokenizer.ggml.tokens` by index; a token with a character outside the GPT-2
//!   byte alphabet is respelled byte by byte in it; merges: `tokenizer.ggml.merges`;
//! - added tokens: control tokens (`token_type` 3) spelled in the byte alphabet as special,
//!   user-defined ones (4) found in the vocabulary as plain, then the bos/eos/unk/pad tokens as
//!   special;
//! - pre-tokenizer: the split regex of `tokenizer.ggml.pre` when transformers has one for it
//!   (then byte-level without its own regex), else GPT-2's byte-level pre-tokenizer;
//! - post-processor: BOS/EOS added as `tokenizer.ggml.add_bos_token` / `add_eos_token` say.
//!
//! Sentencepiece vocabularies (`llama`) and others are an error. Must not read tensors.

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::quantized::gguf_file::Value as Meta;
use serde_json::{json, Map, Value};

use super::error::{ModelError, Result};
use super::gguf_config::{as_usize, config_err, meta_bool, meta_str, meta_usize};

/// The two tokenizer files of a GGUF model.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerFiles {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
}

// transformers' split regexes for `tokenizer.ggml.pre` values, verbatim.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` value (None: GPT-2's).
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's byte → character table: printable Latin-1 bytes map to themselves, the others to
/// U+0100 onwards in byte order.
pub fn byte_alphabet() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next = 256;
    for (b, c) in table.iter_mut().enumerate() {
        let b = b as u32;
        *c = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    table
}

/// A metadata array of strings, or None when absent.
fn strings<'a>(
    meta: &'a HashMap<String, Meta>,
    url: &str,
    key: &str,
) -> Result<Option<Vec<&'a str>>> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let bad = || config_err(url, key, "expected an array of strings");
    let Meta::Array(items) = v else {
        return Err(bad());
    };
    items
        .iter()
        .map(|i| match i {
            Meta::String(s) => Ok(s.as_str()),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The tokenizer files of this metadata; None when it has no `tokenizer.ggml.model`.
pub fn tokenizer_files(meta: &HashMap<String, Meta>, url: &str) -> Result<Option<TokenizerFiles>> {
    let Some(model) = meta_str(meta, url, "tokenizer.ggml.model")? else {
        return Ok(None);
    };
    if model != "gpt2" {
        return Err(ModelError::Unsupported {
            url: url.to_string(),
            what: "tokenizer (tokenizer.ggml.model)".into(),
            found: model,
            supported: "gpt2 (byte-level BPE)".into(),
        });
    }
    let need = |key: &str| strings(meta, url, key)?.ok_or_else(|| config_err(url, key, "missing"));
    let tokens = need("tokenizer.ggml.tokens")?;
    let merges = need("tokenizer.ggml.merges")?;
    let types: Vec<usize> = match meta.get("tokenizer.ggml.token_type") {
        None => vec![],
        Some(Meta::Array(a)) => a.iter().map(|v| as_usize(v).unwrap_or(0)).collect(),
        Some(_) => {
            return Err(config_err(
                url,
                "tokenizer.ggml.token_type",
                "expected an array of integers",
            ))
        }
    };
    let spell = byte_alphabet();
    let alphabet: HashSet<char> = spell.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab: HashMap<String, usize> = HashMap::new();
    for (id, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| spell[b as usize]).collect()
        };
        vocab.insert(key, id);
    }
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                config_err(
                    url,
                    "tokenizer.ggml.merges",
                    format!("merge {i} ({m:?}) has no space"),
                )
            })?;
            Ok(json!([a, b]))
        })
        .collect::<Result<Vec<Value>>>()?;
    // Added tokens (content, id, special), in the order transformers adds them.
    let mut added: Vec<(String, usize, bool)> = Vec::new();
    for (t, &ty) in tokens.iter().zip(&types) {
        if ty == 3 && in_alphabet(t) {
            add_token(&mut added, &vocab, t, true);
        }
    }
    for (t, &ty) in tokens.iter().zip(&types) {
        if ty == 4 && (vocab.contains_key(*t) || added.iter().any(|a| a.0 == *t)) {
            add_token(&mut added, &vocab, t, false);
        }
    }
    let mut config = Map::new();
    let mut special_ids = BTreeMap::new();
    for (name, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        let key = format!("tokenizer.ggml.{key}");
        if let Some(id) = meta_usize(meta, url, &key)? {
            let t = *tokens.get(id).ok_or_else(|| {
                config_err(
                    url,
                    &key,
                    format!("{id} is not below the {} tokens", tokens.len()),
                )
            })?;
            special_ids.insert(name, (t, add_token(&mut added, &vocab, t, true)));
            config.insert(name.into(), json!(t));
        }
    }
    let flag = |key: &str| meta_bool(meta, url, &format!("tokenizer.ggml.{key}"));
    let add_bos = flag("add_bos_token")?.unwrap_or(false) && special_ids.contains_key("bos_token");
    let add_eos = flag("add_eos_token")?.unwrap_or(false) && special_ids.contains_key("eos_token");
    config.insert("add_bos_token".into(), json!(add_bos));
    if flag("add_eos_token")?.is_some() {
        config.insert("add_eos_token".into(), json!(add_eos));
    }
    if let Some(t) = meta_str(meta, url, "tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(t));
    }
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    added.sort_by_key(|a| a.1);
    let added_tokens: Vec<Value> = added
        .iter()
        .map(|(content, id, special)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": special})
        })
        .collect();
    let pre_tokenizer = match meta_str(meta, url, "tokenizer.ggml.pre")?
        .as_deref()
        .and_then(split_regex)
    {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
             "invert": false},
            byte_level(false, false)]}),
        None => byte_level(false, true),
    };
    let vocab: Map<String, Value> = vocab.into_iter().map(|(t, id)| (t, json!(id))).collect();
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added_tokens,
        "normalizer": null, "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(&special_ids, add_bos, add_eos),
        "decoder": byte_level(true, true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                  "byte_fallback": false, "ignore_merges": false, "vocab": vocab,
                  "merges": merges},
    });
    Ok(Some(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: Value::Object(config),
    }))
}

/// A `ByteLevel` pre-tokenizer or decoder (trimming offsets).
fn byte_level(add_prefix_space: bool, use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true,
           "use_regex": use_regex})
}

/// Adds `content` as an added token (or marks an added one special) and returns its id: its
/// vocabulary id, else the next id after the vocabulary and the added tokens.
fn add_token(
    added: &mut Vec<(String, usize, bool)>,
    vocab: &HashMap<String, usize>,
    content: &str,
    special: bool,
) -> usize {
    if let Some(a) = added.iter_mut().find(|a| a.0 == content) {
        a.2 |= special;
        return a.1;
    }
    let id = vocab.get(content).copied().unwrap_or_else(|| {
        let after_added = added.iter().map(|a| a.1 + 1).max().unwrap_or(0);
        vocab.len().max(after_added)
    });
    added.push((content.to_string(), id, special));
    id
}

/// transformers' `TemplateProcessing`: `[bos] $A [eos]` and `[bos] $A [eos] [bos] $B [eos]`.
fn post_processor(special: &BTreeMap<&str, (&str, usize)>, add_bos: bool, add_eos: bool) -> Value {
    let piece = |name: &str, type_id: u32| {
        let id = special[name].0;
        json!({"SpecialToken": {"id": id, "type_id": type_id}})
    };
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (part, type_id) in [("A", 0), ("B", 1)] {
        let mut pieces = Vec::new();
        if add_bos {
            pieces.push(piece("bos_token", type_id));
        }
        pieces.push(seq(part, type_id));
        if add_eos {
            pieces.push(piece("eos_token", type_id));
        }
        if part == "A" {
            single = pieces.clone();
        }
        pair.extend(pieces);
    }
    let mut tokens = Map::new();
    for (name, on) in [("bos_token", add_bos), ("eos_token", add_eos)] {
        if on {
            let (t, id) = special[name];
            tokens.insert(t.into(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": tokens})
}
