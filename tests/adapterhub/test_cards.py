"""Model cards: YAML metadata through ModelCardData, the body, existing cards and validation."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from adapterhub.cards import BEGIN_MARKER, END_MARKER, render_card, validate_card
from adapterhub.cards.hub_ids import HUB_LICENSES
from adapterhub.cli import main
from adapterhub.compose.options import ComposeOptions, ModuleWeight
from adapterhub.errors import CardError
from adapterhub.library import Library
from tests.adapterhub.builders import synthetic_adapter
from tests.conftest import CORPUS_LORA

MODULES = {"model.layers.0.self_attn.q_proj": (16, 16, 4), "model.layers.0.self_attn.v_proj": (16, 16, 4)}

AUTHOR_CARD = """---
base_model: /home/author/models/base
license: mit
datasets:
- imdb
language: en
tags:
- sentiment
- base_model:adapter:/home/author/models/base
model-index:
- name: tiny-sentiment
  results:
  - task:
      type: text-classification
      name: Text Classification
    dataset:
      name: IMDB
      type: imdb
      config: plain_text
      split: test
    metrics:
    - type: accuracy
      value: 0.91
      name: Accuracy
---

# Tiny sentiment adapter

Trained for three epochs on IMDB reviews by the author.

## Model Details

### Model Description

<!-- Provide a longer summary of what this model is. -->

- **Developed by:** Ada Author
- **Funded by [optional]:** [More Information Needed]

## Uses

### Direct Use

[More Information Needed]

## Bias, Risks, and Limitations

Reviews are English only; other languages were never tested.

### Recommendations

Users (both direct and downstream) should be made aware of the risks, biases and limitations of the model. More information needed for further recommendations.

### Framework versions

- PEFT 0.13.2
"""


@pytest.fixture
def library(store_home) -> Library:
    return Library.open(store_home)


def add_synthetic(library: Library, folder: Path, name: str, seed: int = 0, readme: str | None = None,
                  **config) -> str:
    synthetic_adapter(folder, MODULES, seed=seed, **config)
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return library.add(folder, name=name).artifact_id


def parse(text: str) -> tuple[dict, str]:
    card = ModelCard(text)
    return card.data.to_dict(), card.text


def compose_pair(library: Library, tmp_path: Path, **options) -> tuple[str, str, str]:
    task = add_synthetic(library, tmp_path / "task", "task", seed=1)
    style = add_synthetic(library, tmp_path / "style", "style", seed=2, lora_alpha=4)
    options = ComposeOptions(**{"method": "svd", "rank": 4, "weights": (1.0, 0.6), "device": "cpu",
                                **options})
    composed = library.compose(["task", "style"], options, name="task+style")
    return task, style, composed.artifact_id


def test_plain_corpus_card_metadata(library, corpus):
    library.add(corpus / "llama32-1b-lora-qv", name="llama")
    details = library.show("llama")

    text = render_card(library, "llama", overrides={"license": "llama3.2", "datasets": "imdb,sst2",
                                                     "language": "en", "tags": "chat",
                                                     "trained_by": "the lab"})
    data, body = parse(text)

    assert data == {
        "base_model": "meta-llama/Llama-3.2-1B",
        "datasets": ["imdb", "sst2"],
        "language": ["en"],
        "library_name": "peft",
        "license": "llama3.2",
        "pipeline_tag": "text-generation",
        "tags": ["peft", "lora", "chat"],
        "base_model_relation": "adapter",
    }
    assert ModelCardData(**data).to_dict() == data
    assert "| rank `r` | 8 |\n| `lora_alpha` | 32 |\n| scaling | α / r = 4 |\n| rsLoRA | no |\n" in body
    assert "| `target_modules` | `q_proj`, `v_proj` |\n" in body
    assert f"| trainable parameters | {details['metadata']['parameters']:,} |\n" in body
    for entry in details["files"]:
        assert f"| `{entry['path']}` | " in body
        assert f"| `{entry['sha256']}` |\n" in body
    assert "- **trained_by:** the lab\n" in body
    assert 'base = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B")\n' in body
    assert "[More Information Needed]" not in text


def test_annotations_fill_card(library, tmp_path):
    artifact_id = add_synthetic(library, tmp_path / "a", "plain")
    library.store.annotate(artifact_id, {"license": "mit", "description": "A tiny adapter.",
                                         "trained_by": "the lab"})

    data, body = parse(render_card(library, "plain", overrides={"license": "apache-2.0"}))

    assert data["license"] == "apache-2.0"
    assert "\n\nA tiny adapter.\n\n" in body
    assert "- **trained_by:** the lab\n" in body


def test_repo_id_names_adapter_in_snippet(library, tmp_path):
    add_synthetic(library, tmp_path / "a", "plain")

    body = parse(render_card(library, "plain", repo_id="me/tiny-lora"))[1]

    assert 'model = PeftModel.from_pretrained(base, "me/tiny-lora")\n' in body
    assert "adapterhub export" not in body


def test_rank_pattern_and_rslora_stated(library, tmp_path):
    add_synthetic(library, tmp_path / "a", "patterned", use_rslora=True, lora_alpha=8,
                  rank_pattern={"v_proj": 4}, alpha_pattern={"v_proj": 2})

    body = parse(render_card(library, "patterned"))[1]

    assert "| scaling | α / √r = 4 |\n| rsLoRA | yes |\n" in body
    assert "| pattern | rank | alpha |\n|---|---|---|\n| `v_proj` | 4 | 2 |\n" in body


def test_composed_card_recipe(library, tmp_path):
    task, style, composed = compose_pair(library, tmp_path)

    data, body = parse(render_card(library, "task+style"))

    assert data["tags"] == ["peft", "lora", "svd"]
    assert data["base_model"] == "test/tiny-base"
    assert data["base_model_relation"] == "adapter"
    assert data["library_name"] == "peft"
    assert (
        "| # | parent | id | weight |\n|---|---|---|---|\n"
        f"| 1 | task | `sha256:{task[:12]}` | 1.0 |\n"
        f"| 2 | style | `sha256:{style[:12]}` | 0.6 |\n"
    ) in body
    assert "Parameters: `rank=4`.\n" in body
    assert "over 2 modules: lowest " in body
    assert (
        "```sh\nadapterhub compose \\\n"
        f"  sha256:{task} \\\n"
        f"  sha256:{style} \\\n"
        "  --weights=1.0,0.6 --method svd --rank 4 --name task+style\n```\n"
    ) in body


def test_cat_card_states_exact_sum(library, tmp_path):
    compose_pair(library, tmp_path, method="cat", rank=None)

    data, body = parse(render_card(library, "task+style"))

    assert data["tags"] == ["peft", "lora", "cat"]
    assert "The result is exact: all 2 modules keep their full update (rank 8).\n" in body
    assert "  --weights=1.0,0.6 --method cat --name task+style\n" in body


@pytest.mark.parametrize("options", [
    {},
    {"method": "dare_ties", "density": 0.5, "seed": 7, "keep_head": "style",
     "module_weights": (ModuleWeight("style", ".*v_proj", 0.25),)},
])
def test_composed_card_command_reproduces(library, tmp_path, store_home, options):
    composed = compose_pair(library, tmp_path, **options)[2]
    body = parse(render_card(library, "task+style"))[1]
    command = body.split("```sh\nadapterhub ")[1].split("\n```")[0].replace("\\\n", " ")

    words = shlex.split(command)
    words[words.index("--name") + 1] = "again"
    result = CliRunner().invoke(main, ["--home", str(store_home), *words, "--quiet"])

    again = library.load("again")
    original = library.load(composed)
    assert result.exit_code == 0, result.output
    assert again.config == original.config
    assert again.tensors.keys() == original.tensors.keys()
    for key, tensor in original.tensors.items():
        assert torch.equal(again.tensors[key], tensor), key
    recorded = again.lineage
    assert [p["id"] for p in recorded["parents"]] == [p["id"] for p in original.lineage["parents"]]
    # Parents are named by id in the command, so labels in the recipe become positions.
    expected = dict(original.lineage["parameters"])
    if "keep_head" in expected:
        expected["keep_head"] = "2"
        expected["module_weights"] = [{**rule, "adapter": "2"} for rule in expected["module_weights"]]
    assert recorded["parameters"] == expected


def test_composed_card_shows_parent_hub_repo(library, tmp_path, store_home):
    task, _, _ = compose_pair(library, tmp_path)
    # The Hub code records each pulled location in a remote record beside the store.
    from adapterhub.hub.remotes import RemoteRecord, RemoteRecords

    RemoteRecords(store_home, library.store.blobs.tmp_dir).put(RemoteRecord(
        "https://huggingface.co", "someone/task-lora", "main", "", "0" * 40, task, "task:latest",
        "pull"))

    body = parse(render_card(library, "task+style"))[1]

    assert "| # | parent | id | weight | Hub repo |\n|---|---|---|---|---|\n" in body
    assert f"| 1 | task | `sha256:{task[:12]}` | 1.0 | [someone/task-lora](https://huggingface.co/someone/task-lora) |\n" in body
    assert "| 0.6 | |\n" in body


def test_stack_card_lists_components(library, tmp_path):
    task = add_synthetic(library, tmp_path / "task", "task", seed=1)
    style = add_synthetic(library, tmp_path / "style", "style", seed=2)
    stack_id = library.stack(["task", "style"], weights=(1.0, 0.5), name="both").artifact_id

    data, body = parse(render_card(library, "both"))

    assert data == {"base_model": "test/tiny-base", "library_name": "peft",
                    "pipeline_tag": "text-generation", "tags": ["peft", "lora"],
                    "base_model_relation": "adapter"}
    assert "A stack of 2 PEFT adapters" in body
    assert f"- **Artifact id:** `sha256:{stack_id}`\n" in body
    assert (
        "| # | adapter | id | weight | rank |\n|---|---|---|---|---|\n"
        f"| 1 | task | `sha256:{task[:12]}` | 1.0 | 4 |\n"
        f"| 2 | style | `sha256:{style[:12]}` | 0.5 | 4 |\n"
    ) in body
    assert ('model = PeftModel.from_pretrained(base, "./adapter", subfolder="task", '
            'adapter_name="task")\n') in body
    assert 'model.load_adapter("./adapter", subfolder="style", adapter_name="style")\n' in body
    assert 'model.add_weighted_adapter(\n    ["task", "style"],\n    [1.0, 0.5],\n' in body
    assert "## Configuration" not in body


def test_every_corpus_adapter_renders(library, corpus):
    for name in CORPUS_LORA:
        library.add(corpus / name, name=name)

        text = render_card(library, name)

        assert ModelCard(text).data.library_name == "peft", name
        assert "[More Information Needed]" not in text, name


@pytest.mark.parametrize("base", ["/data/models/llama-3.2-1b", "./checkpoints/base"])
def test_local_path_base_model_left_out(library, tmp_path, caplog, base):
    add_synthetic(library, tmp_path / "a", "local", base_model_name_or_path=base)

    with caplog.at_level(logging.WARNING, logger="adapterhub.cards.metadata"):
        text = render_card(library, "local")
    data, body = parse(text)

    assert "base_model" not in data
    assert data["base_model_relation"] == "adapter"
    assert [record.getMessage() for record in caplog.records] == [
        f"base model {base!r} is a local path, so the card's metadata leaves base_model out; "
        "set it with --set base_model=OWNER/NAME"
    ]
    assert (f"- **Base model:** `{base}`, as the adapter config records it. The name is a local "
            "path, so the card's metadata leaves `base_model` out.\n") in body
    validate_card(text)


def test_bare_base_name_left_out(library, corpus, caplog):
    library.add(corpus / "gemma3-270m-lora-qkvo", name="gemma")

    with caplog.at_level(logging.WARNING, logger="adapterhub.cards.metadata"):
        data, body = parse(render_card(library, "gemma"))
    named = parse(render_card(library, "gemma", overrides={"base_model": "google/gemma-3-270m-it"}))

    assert "base_model" not in data
    assert "'gemma3-270m-it' has no owner namespace" in caplog.text
    assert ("- **Base model:** `gemma3-270m-it`, as the adapter config records it. The name has no "
            "owner namespace and is not one of the Hub's legacy model ids, so the card's metadata "
            "leaves `base_model` out.\n") in body
    assert named[0]["base_model"] == "google/gemma-3-270m-it"
    assert ("- **Base model:** [`google/gemma-3-270m-it`](https://huggingface.co/google/gemma-3-270m-it) "
            "(the adapter config records it as `gemma3-270m-it`)\n") in named[1]


def test_legacy_base_id_kept(library, corpus):
    library.add(corpus / "gpt2-lora-demo-causal", name="demo")

    data = parse(render_card(library, "demo"))[0]

    assert data["base_model"] == "gpt2"


def test_existing_card_keeps_author_text(library, tmp_path):
    add_synthetic(library, tmp_path / "a", "pulled", readme=AUTHOR_CARD, task_type="SEQ_CLS")
    author = ModelCard(AUTHOR_CARD).data

    text = render_card(library, "pulled")
    data, body = parse(text)

    assert data["base_model"] == "test/tiny-base"
    assert data["license"] == "mit"
    assert data["datasets"] == ["imdb"]
    assert data["language"] == "en"
    assert data["tags"] == ["sentiment", "peft", "lora"]
    assert data["pipeline_tag"] == "text-classification"
    assert data["model-index"] == author.to_dict()["model-index"]
    assert ModelCard(text).data.eval_results == author.eval_results
    assert body.startswith("\n# Tiny sentiment adapter\n\nTrained for three epochs on IMDB reviews by "
                           "the author.\n\n## Model Details\n\n### Model Description\n\n")
    assert "- **Developed by:** Ada Author\n" in body
    assert "Reviews are English only; other languages were never tested.\n" in body
    assert "### Framework versions\n\n- PEFT 0.13.2\n\n" + BEGIN_MARKER in body
    for dropped in ("[More Information Needed]", "## Uses", "### Recommendations", "Funded by"):
        assert dropped not in body
    assert body.count(BEGIN_MARKER) == 1
    assert body.endswith(END_MARKER + "\n")
    assert "| `README.md` |" not in body


def test_rerender_replaces_only_marked_block(library, tmp_path):
    add_synthetic(library, tmp_path / "a", "pulled", readme=AUTHOR_CARD)
    first = render_card(library, "pulled")
    edited = first.replace("Trained for three epochs", "Trained for four epochs")

    second = render_card(library, "pulled", existing=edited, overrides={"license": "apache-2.0"})

    assert "Trained for four epochs" in second
    assert parse(second)[0]["license"] == "apache-2.0"
    assert second.count(BEGIN_MARKER) == 1
    assert render_card(library, "pulled", existing=first) == first


def test_empty_existing_starts_fresh(library, tmp_path):
    add_synthetic(library, tmp_path / "a", "pulled", readme=AUTHOR_CARD)

    text = render_card(library, "pulled", existing="")

    assert "Tiny sentiment" not in text
    assert "license" not in parse(text)[0]
    assert parse(text)[1].startswith("\n# pulled\n\n" + BEGIN_MARKER)


def test_unreadable_existing_card_named(library, tmp_path):
    readme = "---\nmodel-index:\n- name: tiny\n---\n\n# tiny\n"
    add_synthetic(library, tmp_path / "a", "pulled", readme=readme)

    with pytest.raises(CardError) as error:
        render_card(library, "pulled")
    fresh = render_card(library, "pulled", existing="")

    assert str(error.value) == (
        "the existing card's metadata cannot be read: model-index[0].results: expected a list, "
        "found nothing; fix its YAML block, or render without the existing card (--fresh)"
    )
    assert error.value.fields == ("model-index[0].results",)
    assert "model-index" not in parse(fresh)[0]


def test_rendering_is_deterministic(tmp_path, corpus):
    texts = []
    for home in ("one", "two"):
        library = Library.open(tmp_path / home)
        library.add(corpus / "distilbert-lora-imdb", name="imdb")
        texts.append(render_card(library, "imdb").encode("utf-8"))
        texts.append(render_card(library, "imdb").encode("utf-8"))

    assert len(set(texts)) == 1


def test_malformed_model_index_rejected():
    card_data = ModelCardData(library_name="peft", eval_results=[EvalResult(
        task_type="text-classification", dataset_type="imdb", dataset_name="IMDB",
        metric_type="accuracy", metric_value=0.9, dataset_config=1)], model_name="tiny")
    text = f"---\n{card_data.to_yaml()}\n---\n\n# tiny\n"

    with pytest.raises(CardError) as error:
        validate_card(text)

    assert str(error.value) == (
        "the model card's metadata would be rejected: model-index[0].results[0].dataset.config: "
        "expected a string, found int 1"
    )
    assert error.value.fields == ("model-index[0].results[0].dataset.config",)


def test_model_index_without_metrics_rejected():
    text = ("---\nmodel-index:\n- name: tiny\n  results:\n  - task:\n      type: text-classification\n"
            "    dataset:\n      type: imdb\n---\n")

    with pytest.raises(CardError) as error:
        validate_card(text)

    assert str(error.value) == (
        "the model card's metadata would be rejected: model-index[0].results[0].dataset.name: "
        "missing; the Hub requires it; model-index[0].results[0].metrics: expected a non-empty "
        "list, found nothing"
    )


def test_path_base_model_and_unknown_license_rejected():
    text = "---\nbase_model: /data/models/llama-3.2-1b\nlicense: apache2\nlibrary_name: peft\n---\n"

    with pytest.raises(CardError) as error:
        validate_card(text)

    assert str(error.value) == (
        "the model card's metadata would be rejected: base_model: '/data/models/llama-3.2-1b' is "
        "a local path; the Hub accepts only model ids such as meta-llama/Llama-3.2-1B, so remove "
        "it or set the base model's Hub id; license: 'apache2' is not a Hub license id (did you "
        "mean 'apache-2.0'?); use an id from https://huggingface.co/docs/hub/repositories-licenses, "
        "or license: other with license_name and license_link"
    )
    assert error.value.fields == ("base_model", "license")


def test_duplicate_tags_fail_round_trip():
    with pytest.raises(CardError) as error:
        validate_card("---\ntags:\n- peft\n- peft\n---\n")

    assert str(error.value) == (
        "the model card's metadata would be rejected: tags: written as ['peft', 'peft'] but "
        "huggingface_hub reads it back as ['peft']"
    )


def test_card_without_metadata_passes():
    validate_card("# just prose\n")


def test_render_rejects_bad_license_override(library, tmp_path):
    add_synthetic(library, tmp_path / "a", "plain")

    with pytest.raises(CardError) as error:
        render_card(library, "plain", overrides={"license": "MIT License"})

    assert error.value.fields == ("license",)


def test_license_list_has_common_ids():
    assert {"apache-2.0", "mit", "llama3.2", "gemma", "other", "cc-by-nc-4.0"} <= HUB_LICENSES


def test_user_template_undefined_variable(library, tmp_path):
    add_synthetic(library, tmp_path / "a", "plain")
    template = tmp_path / "card.md.j2"
    template.write_text("# {{ title }}\n\nTrained on {{ training_data }}.\n")

    with pytest.raises(CardError) as error:
        render_card(library, "plain", template=template)

    assert str(error.value).startswith(
        f"template {template}, line 3: 'training_data' is undefined; the variables a card "
        "template gets are artifact, base_model, begin_marker, card_data, config, description, "
    )
    assert error.value.fields == ("training_data",)


def test_user_template_renders_with_packaged_parts(library, tmp_path):
    add_synthetic(library, tmp_path / "a", "plain")
    template = tmp_path / "card.md.j2"
    template.write_text("# {{ title }} (r={{ config.rank }})\n\n{% include '_files.md.j2' %}\n")

    text = render_card(library, "plain", template=template, overrides={"title": "Tiny"})
    body = parse(text)[1]

    assert body.startswith(f"\n{BEGIN_MARKER}\n# Tiny (r=4)\n\n## Files\n")
    assert body.endswith(f"{END_MARKER}\n")


def test_cli_card_writes_and_updates(store_home, tmp_path):
    synthetic_adapter(tmp_path / "a", MODULES)
    runner = CliRunner()
    runner.invoke(main, ["--home", str(store_home), "add", str(tmp_path / "a"), "--name", "plain"])
    output = tmp_path / "README.md"

    first = runner.invoke(main, ["--home", str(store_home), "card", "plain", "-o", str(output),
                                 "--set", "license=apache-2.0"])
    output.write_text(output.read_text().replace("# plain\n", "# plain\n\nWritten by hand.\n"))
    second = runner.invoke(main, ["--home", str(store_home), "card", "plain", "-o", str(output),
                                  "--set", "description=A tiny test adapter."])
    printed = runner.invoke(main, ["--home", str(store_home), "card", "plain"])

    assert first.exit_code == 0, first.output
    assert first.output == f"{output}\n"
    assert second.exit_code == 0, second.output
    text = output.read_text()
    assert "Written by hand.\n" in text
    assert f"{BEGIN_MARKER}\n<!-- Generated" in text
    assert "A tiny test adapter.\n" in text
    assert ModelCard(text).data.license == "apache-2.0"
    assert printed.output == render_card(Library.open(store_home), "plain", existing="")


def test_cli_card_bad_assignment_exits_2(store_home, tmp_path):
    synthetic_adapter(tmp_path / "a", MODULES)
    CliRunner().invoke(main, ["--home", str(store_home), "add", str(tmp_path / "a"), "--name", "p"])

    result = CliRunner().invoke(main, ["--home", str(store_home), "card", "p", "--set", "license"])

    assert result.exit_code == 2
    assert result.output == "Error: 'license': expected KEY=VALUE, for example --set license=apache-2.0\n"


def test_cli_card_invalid_metadata_exits_1(store_home, tmp_path):
    synthetic_adapter(tmp_path / "a", MODULES)
    CliRunner().invoke(main, ["--home", str(store_home), "add", str(tmp_path / "a"), "--name", "p"])

    output = tmp_path / "README.md"
    result = CliRunner().invoke(main, ["--home", str(store_home), "card", "p", "-o", str(output),
                                       "--set", "base_model=./checkpoints/base"])

    assert result.exit_code == 1
    assert not output.exists()
    assert result.output.startswith("Error: the model card's metadata would be rejected: base_model: "
                                    "'./checkpoints/base' is a local path;")


def test_card_command_does_not_import_torch(corpus, store_home):
    Library.open(store_home).add(corpus / "gpt2-lora-demo-causal", name="demo")
    script = (
        "import sys\n"
        "from adapterhub.cli import main\n"
        f"main(['--home', {str(store_home)!r}, 'card', 'demo'], standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


def test_loading_snippets_run_in_peft(library, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    modules = {"model.layers.0.self_attn.q_proj": (32, 32, 4),
               "model.layers.0.self_attn.v_proj": (16, 32, 4)}
    for seed, name in enumerate(("task", "style")):
        synthetic_adapter(tmp_path / name, modules, seed=seed,
                          base_model_name_or_path=str(tmp_path / "base"))
        library.add(tmp_path / name, name=name)
    library.stack(["task", "style"], weights=(1.0, 0.5), name="both")
    monkeypatch.chdir(tmp_path)

    for reference, expected in (("task", {"default"}), ("both", {"task", "style", "stack"})):
        body = parse(render_card(library, reference))[1]
        snippet = body.split("```python\n")[1].split("```")[0]
        library.export(reference, tmp_path / "adapter", overwrite=True)
        namespace: dict = {}

        exec(snippet, namespace)

        assert set(namespace["model"].peft_config) == expected, reference
