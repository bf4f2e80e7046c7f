"""Identifiers the Hugging Face Hub accepts in model card metadata, kept offline.

``HUB_LICENSES`` is the union of the license table in hub-docs
(``docs/hub/repositories-licenses.md``, 2025) and the license filter of
huggingface.co/models, read in 2026. The Hub adds ids from time to time; a card that needs a
newer one can use ``license: other`` with ``license_name`` and ``license_link``.

``LEGACY_MODEL_IDS`` are the model ids without a namespace that the Hub serves: the shortcut
names of transformers' original pretrained models, which the Hub moved into organisations in
2024 (``gpt2`` is now ``openai-community/gpt2``) and still redirects. Every other model id has
the form ``owner/name``.
"""

from __future__ import annotations

HUB_LICENSES = frozenset({
    "afl-3.0", "agpl-3.0", "apache-2.0", "apple-amlr", "apple-ascl", "artistic-2.0",
    "bigcode-openrail-m", "bigscience-bloom-rail-1.0", "bigscience-openrail-m", "bsd",
    "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "bsl-1.0", "c-uda", "cc", "cc-by-2.0",
    "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cc-by-nd-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc0-1.0", "cdla-permissive-1.0",
    "cdla-permissive-2.0", "cdla-sharing-1.0", "creativeml-openrail-m", "deepfloyd-if-license",
    "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2",
    "fair-noncommercial-research-license", "gemma", "gfdl", "gpl", "gpl-2.0", "gpl-3.0",
    "grok2-community", "h-research", "intel-research", "isc", "lgpl", "lgpl-2.1", "lgpl-3.0",
    "lgpl-lr", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "lppl-1.3c",
    "mit", "mpl-2.0", "ms-pl", "ncsa", "odbl", "odc-by", "ofl-1.1", "openmdw-1.0", "openmdw-1.1",
    "openrail", "openrail++", "osl-3.0", "other", "pddl", "postgresql", "unknown", "unlicense",
    "wtfpl", "zlib",
})

# NOTE: assembled from transformers' pretrained-model shortcut names, not read from the Hub. A
# legacy name missing here is treated as unknown, so the user must give its namespaced id.
LEGACY_MODEL_IDS = frozenset({
    "albert-base-v1", "albert-base-v2", "albert-large-v1", "albert-large-v2", "albert-xlarge-v1",
    "albert-xlarge-v2", "albert-xxlarge-v1", "albert-xxlarge-v2",
    "bert-base-cased", "bert-base-cased-finetuned-mrpc", "bert-base-chinese",
    "bert-base-german-cased", "bert-base-german-dbmdz-cased", "bert-base-german-dbmdz-uncased",
    "bert-base-multilingual-cased", "bert-base-multilingual-uncased", "bert-base-uncased",
    "bert-large-cased", "bert-large-cased-whole-word-masking",
    "bert-large-cased-whole-word-masking-finetuned-squad", "bert-large-uncased",
    "bert-large-uncased-whole-word-masking",
    "bert-large-uncased-whole-word-masking-finetuned-squad",
    "camembert-base", "ctrl",
    "distilbert-base-cased", "distilbert-base-cased-distilled-squad",
    "distilbert-base-german-cased", "distilbert-base-multilingual-cased",
    "distilbert-base-uncased", "distilbert-base-uncased-distilled-squad",
    "distilbert-base-uncased-finetuned-sst-2-english", "distilgpt2", "distilroberta-base",
    "gpt2", "gpt2-large", "gpt2-medium", "gpt2-xl", "openai-gpt",
    "roberta-base", "roberta-base-openai-detector", "roberta-large", "roberta-large-mnli",
    "roberta-large-openai-detector",
    "t5-11b", "t5-3b", "t5-base", "t5-large", "t5-small", "transfo-xl-wt103",
    "xlm-clm-ende-1024", "xlm-clm-enfr-1024", "xlm-mlm-100-1280", "xlm-mlm-17-1280",
    "xlm-mlm-en-2048", "xlm-mlm-ende-1024", "xlm-mlm-enfr-1024", "xlm-mlm-enro-1024",
    "xlm-mlm-tlm-xnli15-1024", "xlm-mlm-xnli15-1024", "xlm-roberta-base", "xlm-roberta-large",
    "xlm-roberta-large-finetuned-conll02-dutch", "xlm-roberta-large-finetuned-conll02-spanish",
    "xlm-roberta-large-finetuned-conll03-english", "xlm-roberta-large-finetuned-conll03-german",
    "xlnet-base-cased", "xlnet-large-cased",
})

# The ``base_model_relation`` values the Hub documents.
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")

# PEFT task types and the Hub pipeline tag each one implies. SEQ_2_SEQ_LM is left out: it
# covers both text-to-text models and speech models such as Whisper, so the tag would be a guess.
PIPELINE_TAGS = {
    "CAUSAL_LM": "text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}
