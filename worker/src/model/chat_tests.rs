//! Chat templates rendered against outputs written out by hand (each was also checked with
//! Jinja2 configured as transformers configures it), their errors, the tokenizer's chat
//! encoding against plain encoding with a BOS post-processor, and where a model directory's
//! template comes from.

use candle_core::Device;
use serde_json::{json, Value};

use super::chat::{config_chat_template, ChatMessage, ChatTemplate, SpecialTokens};
use super::{init_random, ModelConfig, ModelError, Pretrained, Tokenizer};

/// SmolLM2-Instruct's template: ChatML with a default system message.
const SMOLLM2: &str = r#"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}"#;

/// Gemma's template: `bos_token`, `raise_exception`, `| trim`, role renaming.
const GEMMA: &str = r#"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}"#;

/// Llama-3 headers laid out one tag per line, so that `trim_blocks`/`lstrip_blocks` decide the
/// output; a default system message, `bos_token`, `raise_exception`.
const LLAMA3_STYLE: &str = r#"{{ bos_token }}{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] | trim %}
    {% set loop_messages = messages[1:] %}
{% else %}
    {% set system = 'You are a helpful assistant.' %}
    {% set loop_messages = messages %}
{% endif %}
<|start_header_id|>system<|end_header_id|>

{{ system }}<|eot_id|>
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>
{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}
"#;

/// Qwen-style: Python string methods (`.strip()`, `.split()`, `.startswith()`), `namespace`,
/// `loop.last`, and reasoning dropped from earlier assistant turns.
const QWEN_STYLE: &str = r#"{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'assistant' and loop.index0 < ns.last_user %}
        {%- set content = message.content.split('</think>')[-1].strip() %}
    {%- else %}
        {%- set content = message.content.strip() %}
    {%- endif %}
    {%- if message.role.startswith('sys') %}
        {{- '<|im_start|>system\n' + content + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' }}
        {%- if not loop.last %}{{- '\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '\n<|im_start|>assistant\n' }}
{%- endif %}"#;

/// Python compatibility: `dict.items()` in insertion order, `None`/`True` printed as Python
/// prints them, `tojson` as `json.dumps` (with and without indent), `loop` controls.
const PYCOMPAT: &str = r#"{% for k, v in {'b': 1, 'a': 2}.items() %}{{ k }}={{ v }};{% endfor %}
{{ none }}|{{ true }}|{{ 1 == 1 }}|{{ 2.5 }}
{{ messages[0] | tojson }}
{{ {'x': [1, 2.5, none, true, 1e20], 'y': 'a"b\\c', 'z': {}} | tojson }}
{{ {'k': [1, 'é']} | tojson(indent=2) }}
{{ 'é' | tojson(ensure_ascii=true) }}
{% for m in messages %}{% if loop.index0 == 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}"#;

fn tokens() -> SpecialTokens {
    SpecialTokens::from_config(&json!({
        "bos_token": {"content": "<bos>", "lstrip": false, "__type": "AddedToken"},
        "eos_token": "<eos>",
        "pad_token": null,
    }))
}

fn msgs(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
    turns.iter().map(|(r, c)| ChatMessage::new(r, c)).collect()
}

fn render(source: &str, turns: &[(&str, &str)], gen: bool) -> Result<String, ModelError> {
    ChatTemplate::new("test.jinja", source, &tokens())?.render(&msgs(turns), gen)
}

#[test]
fn special_tokens_come_from_strings_and_added_token_objects() {
    let t = tokens();
    assert_eq!(t.tokens.get("bos_token").map(String::as_str), Some("<bos>"));
    assert_eq!(t.tokens.get("eos_token").map(String::as_str), Some("<eos>"));
    assert!(!t.tokens.contains_key("pad_token"));
    assert!(t.additional.is_empty());
}

#[test]
fn smollm2_adds_its_default_system_message() {
    assert_eq!(
        render(SMOLLM2, &[("user", "Hi")], true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        render(SMOLLM2, &[("system", "Be brief."), ("user", "Hi")], false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn gemma_writes_bos_and_raises_on_a_system_turn() {
    assert_eq!(
        render(
            GEMMA,
            &[("user", " Hi "), ("assistant", "Hello."), ("user", "Bye")],
            true
        )
        .unwrap(),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    let e = render(GEMMA, &[("system", "x"), ("user", "Hi")], true)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "chat template test.jinja: the template raised an exception (line 1): System role not \
         supported"
    );
}

#[test]
fn llama3_style_block_lines_vanish_under_trim_and_lstrip_blocks() {
    assert_eq!(
        render(
            LLAMA3_STYLE,
            &[("system", " Be brief. "), ("user", "Hi there")],
            true
        )
        .unwrap(),
        "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\n\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\n\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(
        render(LLAMA3_STYLE, &[("user", "Hi")], false).unwrap(),
        "<bos><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful \
         assistant.<|eot_id|>\n<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\n"
    );
    let e = render(LLAMA3_STYLE, &[("user", "a"), ("user", "b")], true).unwrap_err();
    assert!(
        matches!(&e, ModelError::ChatTemplate { origin, reason }
            if origin == "test.jinja"
            && reason == "the template raised an exception (line 13): Conversation roles must \
                          alternate user/assistant/user/assistant/..."),
        "{e}"
    );
}

#[test]
fn qwen_style_uses_python_string_methods_and_loop_last() {
    let turns = [
        ("system", " sys "),
        ("user", "  What is 2+2? "),
        ("assistant", "<think>add</think> 4 "),
        ("user", "And 3+3?"),
    ];
    assert_eq!(
        render(QWEN_STYLE, &turns, true).unwrap(),
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        render(QWEN_STYLE, &turns[1..2], false).unwrap(),
        "<|im_start|>user\nWhat is 2+2?<|im_end|>"
    );
}

#[test]
fn python_compatibility_of_methods_printing_and_tojson() {
    assert_eq!(
        render(
            PYCOMPAT,
            &[("user", "hé \"q\"\n"), ("assistant", "x")],
            false
        )
        .unwrap(),
        "b=1;a=2;None|True|True|2.5\n{\"role\": \"user\", \"content\": \"hé \\\"q\\\"\\n\"}\n\
         {\"x\": [1, 2.5, null, true, 1e+20], \"y\": \"a\\\"b\\\\c\", \"z\": {}}\n\
         {\n  \"k\": [\n    1,\n    \"é\"\n  ]\n}\n\"\\u00e9\"\nuser"
    );
}

#[test]
fn strftime_now_is_the_local_date() {
    let t = ChatTemplate::new("t", "{{ strftime_now('%d %b %Y') }}", &tokens()).unwrap();
    let date = || {
        let o = std::process::Command::new("date")
            .arg("+%d %b %Y")
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim_end().to_string()
    };
    let before = date();
    let got = t.render(&[], false).unwrap();
    assert!(got == before || got == date(), "{got} vs {before}");
    assert_eq!(got.len(), 11, "{got}");
}

#[test]
fn syntax_and_render_errors_name_the_template_and_line() {
    let e = ChatTemplate::new(
        "/m/chat_template.jinja",
        "{% for m in messages %}\n{{ m.content }}",
        &tokens(),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("chat template /m/chat_template.jinja: syntax error:")
            && text.contains("(line 2)"),
        "{text}"
    );
    let e = render(
        "{{ messages[0].content.nosuchmethod() }}",
        &[("user", "x")],
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("chat template test.jinja: unknown method") && e.ends_with("(line 1)"),
        "{e}"
    );
}

#[test]
fn config_template_is_a_string_or_the_default_of_named_ones() {
    assert_eq!(config_chat_template(&json!({})), Ok(None));
    assert_eq!(
        config_chat_template(&json!({"chat_template": "x"})),
        Ok(Some("x"))
    );
    let named = json!({"chat_template": [{"name": "tool_use", "template": "t"},
                                         {"name": "default", "template": "d"}]});
    assert_eq!(config_chat_template(&named), Ok(Some("d")));
    let no_default = json!({"chat_template": [{"name": "tool_use", "template": "t"}]});
    assert_eq!(config_chat_template(&no_default), Ok(None));
    assert!(config_chat_template(&json!({"chat_template": 3})).is_err());
    assert!(config_chat_template(&json!({"chat_template": [{"name": "x"}]})).is_err());
}

/// A word-level tokenizer whose post-processor adds `<s>` (id 1) in front, like Llama's, with
/// `config` as its tokenizer_config.json.
fn bos_tokenizer(config: Value) -> Tokenizer {
    let tiny = Tokenizer::tiny(&["user", "assistant", "system", "a", "b"]).unwrap();
    let mut j: Value = serde_json::from_str(&tiny.to_json().unwrap()).unwrap();
    j["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
    });
    Tokenizer::from_bytes(j.to_string().as_bytes(), config, "test").unwrap()
}

const WORD_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{{ m.role }} {{ m.content }} \
                             {{ eos_token }} {% endfor %}{% if add_generation_prompt %}assistant \
                             {% endif %}";

#[test]
fn encode_chat_adds_no_special_tokens_beyond_the_template() {
    let mut config = Tokenizer::tiny(&[]).unwrap().config().clone();
    config["chat_template"] = json!(WORD_TEMPLATE);
    let t = bos_tokenizer(config);
    // ids: <pad> 0, <s> 1, </s> 2, <unk> 3, user 4, assistant 5, system 6, a 7, b 8
    assert_eq!(t.encode("a b").unwrap(), vec![7, 8]);
    assert_eq!(t.encode_with_special_tokens("a b").unwrap(), vec![1, 7, 8]);
    let chat = [ChatMessage::new("user", "a b")];
    assert_eq!(
        t.chat_template().unwrap().render(&chat, true).unwrap(),
        "<s>user a b </s> assistant "
    );
    // One BOS: the template's (the post-processor would add a second).
    assert_eq!(t.encode_chat(&chat, true).unwrap(), vec![1, 4, 7, 8, 2, 5]);
    assert_eq!(t.encode_chat(&chat, false).unwrap(), vec![1, 4, 7, 8, 2]);
    assert_eq!(
        t.encode_with_special_tokens("<s>user a b </s> assistant ")
            .unwrap(),
        vec![1, 1, 4, 7, 8, 2, 5]
    );
    let plain = bos_tokenizer(Tokenizer::tiny(&[]).unwrap().config().clone());
    assert!(plain.chat_template().is_none());
    let e = plain.encode_chat(&chat, true).unwrap_err().to_string();
    assert!(e.contains("no chat template"), "{e}");
}

#[test]
fn a_broken_config_template_fails_at_construction() {
    let tiny = Tokenizer::tiny(&["a"]).unwrap();
    let json = tiny.to_json().unwrap();
    let e = Tokenizer::from_bytes(
        json.as_bytes(),
        json!({"chat_template": "{% if %}"}),
        "/m/tokenizer.json",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("chat template /m/tokenizer.json `chat_template`: syntax error"),
        "{e}"
    );
    let e = Tokenizer::from_bytes(json.as_bytes(), json!({"chat_template": 1}), "/m/tc.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/m/tc.json: config key `chat_template`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_directory_template_file_wins_over_the_config_and_is_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Tokenizer::tiny(&[]).unwrap().config().clone();
    config["chat_template"] = json!("config {{ messages[0].content }}");
    let model = init_random(&ModelConfig::tiny(9), 1, false, &Device::Cpu).unwrap();
    let path = dir.path().to_str().unwrap();
    Pretrained::from_parts(model, Some(bos_tokenizer(config)))
        .unwrap()
        .save(path, &crate::model::SaveOptions::default())
        .await
        .unwrap();
    let chat = [ChatMessage::new("user", "a")];
    let p = Pretrained::load(path, false, &Device::Cpu).await.unwrap();
    let t = p.tokenizer.unwrap();
    assert_eq!(
        t.chat_template().unwrap().render(&chat, false).unwrap(),
        "config a"
    );
    assert!(t
        .chat_template()
        .unwrap()
        .origin()
        .ends_with("tokenizer_config.json `chat_template`"));

    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "file {{ messages[0].content }}\n",
    )
    .unwrap();
    let p = Pretrained::load(path, false, &Device::Cpu).await.unwrap();
    let t = p.tokenizer.unwrap();
    assert_eq!(
        t.chat_template().unwrap().render(&chat, false).unwrap(),
        "file a"
    );
    assert!(p.aux_files.contains_key("chat_template.jinja"));

    std::fs::write(dir.path().join("chat_template.jinja"), "{% for %}").unwrap();
    let e = Pretrained::load(path, false, &Device::Cpu)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("chat template ") && e.contains("chat_template.jinja: syntax error"),
        "{e}"
    );
}
