"""`ComputeResource`: device, dtype, batch size, workers and quantization for every torch step."""

import dagster as dg

from mmrec_pipeline.compute import Compute


class ComputeResource(dg.ConfigurableResource):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    batch_size: int = 64
    num_workers: int = 0
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes, CUDA only)
    seed: int = 0

    def settings(self) -> Compute:
        return Compute(device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                       num_workers=self.num_workers, quantization=self.quantization, seed=self.seed)
