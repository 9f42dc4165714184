"""`ModelSourcesResource`: where each logical model's weights come from (see mmrec_pipeline/weights.py).

A field left empty means: the env var `MMREC_MODEL_<NAME>`, else the default (packaged offline weights where they
exist, the papers' Hugging Face ids otherwise). Values: `packaged`, `torchvision`, a local path or a hub id.
"""

import dagster as dg

from mmrec_pipeline.weights import ModelSources


class ModelSourcesResource(dg.ConfigurableResource):
    resnet18: str = ""
    efficientnet_lite0: str = ""
    sbert: str = ""
    gpt2: str = ""
    blip2: str = ""
    llava: str = ""
    summarizer: str = ""
    vqgan: str = ""
    allow_download: bool | None = None  # None = env MMREC_ALLOW_DOWNLOAD (default off)

    def sources(self) -> ModelSources:
        return ModelSources(
            resnet18=self.resnet18 or None, efficientnet_lite0=self.efficientnet_lite0 or None,
            sbert=self.sbert or None, gpt2=self.gpt2 or None, blip2=self.blip2 or None, llava=self.llava or None,
            summarizer=self.summarizer or None, vqgan=self.vqgan or None, allow_download=self.allow_download)
