#!/usr/bin/env python3
"""Chat-template fixture for model/tests/io_chat_template.rs: templates written for this test
(exercising what real templates use: whitespace control, trim/lstrip blocks, loop variables and
controls, namespaces, Python string methods, raise_exception, tojson with tools) rendered by
transformers' own `apply_chat_template`. Output: model/tests/fixtures/io/chat_templates.json.
Run with /work/pyenv/bin/python (needs transformers + tokenizers; not in CI)."""
import json
import os

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

OUT = os.path.join(os.path.dirname(__file__), "..", "model", "tests", "fixtures", "io",
                   "chat_templates.json")

TEMPLATES = {
    # ChatML with a default system turn, written with block tags on their own lines (trim_blocks
    # and lstrip_blocks decide the whitespace).
    "chatml_default_system": """{% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are a careful assistant.<|im_end|>
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}""",
    # Llama-2-like: system folded into the first user turn, strict alternation enforced.
    "inst_alternating": """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'].strip() %}
    {%- set rest = messages[1:] %}
{%- else %}
    {%- set system = none %}
    {%- set rest = messages %}
{%- endif %}
{%- for m in rest %}
    {%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if m['role'] == 'user' %}
        {%- if loop.first and system %}
            {{- '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + m['content'].strip() + ' [/INST]' }}
        {%- else %}
            {{- '[INST] ' + m['content'].strip() + ' [/INST]' }}
        {%- endif %}
    {%- else %}
        {{- ' ' + m['content'].strip() + ' ' + eos_token }}
    {%- endif %}
{%- endfor %}""",
    # Tools in the system turn as JSON, a namespace counter, string methods and a loop break.
    "tools_json": """{%- set ns = namespace(users=0) %}
{%- if tools %}
<|system|>Tools:
{{ tools | tojson(indent=2) }}
Compact: {{ tools | tojson }}
{% endif %}
{%- for m in messages %}
    {%- if m.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}
    {%- if m.content.startswith('STOP') %}{% break %}{% endif %}
<|{{ m.role }}|>{{ m.content.replace('\\n', ' ').split(' ') | join('_') }}|{{ m.content | length }}
{% endfor %}
users={{ ns.users }} last={{ messages[-1].role.upper() }}
{%- if add_generation_prompt %}
<|assistant|>
{%- endif %}""",
}

MESSAGES = [
    [{"role": "user", "content": "  Hello there!  "}],
    [{"role": "system", "content": " Be brief. "},
     {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "Ünïcödé\nline two"}],
    [{"role": "user", "content": "one"}, {"role": "user", "content": "STOP here"},
     {"role": "assistant", "content": "never shown"}],
]

# Keys in sorted order: realign passes tools through serde_json, whose maps are sorted.
TOOLS = [{"description": "Weather for a city, in °C", "name": "get_weather",
          "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"],
                         "type": "object"}, "type": "function"}]


def main():
    tk = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    cases = []
    for name, template in TEMPLATES.items():
        for mi, messages in enumerate(MESSAGES):
            for gen in (False, True):
                tools = TOOLS if name == "tools_json" and mi == 1 else None
                try:
                    text = tok.apply_chat_template(messages, chat_template=template, tools=tools,
                                                   tokenize=False, add_generation_prompt=gen)
                    error = None
                except Exception as e:  # raise_exception in the template
                    text, error = None, str(e)
                cases.append({"template": name, "messages": messages, "add_generation_prompt": gen,
                              "tools": tools, "text": text, "error": error})
    with open(OUT, "w") as f:
        json.dump({"special": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                   "templates": TEMPLATES, "cases": cases}, f, indent=1, ensure_ascii=False)
    print(f"wrote {OUT}: {len(cases)} cases, {sum(c['error'] is not None for c in cases)} errors")


if __name__ == "__main__":
    main()
