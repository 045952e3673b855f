"""Chat-sample reading (jsonl / save_to_disk, upstream ``messages`` schema) and the layout collator."""

from nemo_automodel_bard.data.chat import BadSampleError
from nemo_automodel_bard.data.collate import bard_collate
from nemo_automodel_bard.data.dataset import BardChatDataset, build_chat_dataset

__all__ = ["BadSampleError", "BardChatDataset", "bard_collate", "build_chat_dataset"]
