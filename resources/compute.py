"""`ComputeResource`: device, dtype, batch size, workers and quantization for every torch step."""

import dagster as dg
import torch

from mmrec_pipeline.compute import Compute


class ComputeResource(dg.ConfigurableResource):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    # items per forward of the feature encoders (the image-embedding CNNs on CPU: at most image.CPU_CNN_BATCH)
    batch_size: int = 64
    num_workers: int = 0
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes, CUDA only)
    seed: int = 0
    # torch CPU threads per step (0 = torch's default, all cores). Steps that run side by side in the multiprocess
    # executor each get cores / concurrent steps, or they fight over the cores and all slow down several-fold.
    cpu_threads: int = 0

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.cpu_threads > 0:
            torch.set_num_threads(self.cpu_threads)

    def settings(self) -> Compute:
        return Compute(device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                       num_workers=self.num_workers, quantization=self.quantization, seed=self.seed)
