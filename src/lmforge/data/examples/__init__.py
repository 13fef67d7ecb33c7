"""Fine-tuning examples: instruction, chat and classification rows, their chat templates and loss
masks, and the batches the training loop reads (packed or padded, data-parallel, resumable)."""

from lmforge.data.examples.batches import ExampleBatches, LabeledBatches, split_by_hash
from lmforge.data.examples.chat_template import (
    CHATML_SPECIAL_TOKENS,
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    add_special_tokens,
    chat_template_of,
    render_chat,
    vocabulary_template,
)
from lmforge.data.examples.masks import (
    TokenizedExample,
    fit_context,
    tokenize_chat,
    tokenize_completion,
    tokenize_examples,
    tokenize_labeled,
)
from lmforge.data.examples.rows import (
    ChatExample,
    CompletionExample,
    LabeledText,
    Message,
    ReadReport,
    read_examples,
    read_labeled,
)

__all__ = [
    "CHATML_SPECIAL_TOKENS",
    "CHATML_TEMPLATE",
    "GEMMA_TEMPLATE",
    "ChatExample",
    "CompletionExample",
    "ExampleBatches",
    "LabeledBatches",
    "LabeledText",
    "Message",
    "ReadReport",
    "TokenizedExample",
    "add_special_tokens",
    "chat_template_of",
    "fit_context",
    "read_examples",
    "read_labeled",
    "render_chat",
    "split_by_hash",
    "tokenize_chat",
    "tokenize_completion",
    "tokenize_examples",
    "tokenize_labeled",
    "vocabulary_template",
]
