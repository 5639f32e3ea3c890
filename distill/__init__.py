"""distill: multi-teacher knowledge distillation of small, fast text classifiers.

The package distills a student encoder from an ensemble of co-finetuned Hugging Face teacher
encoders (MT-BERT, Wu et al., Findings of ACL 2021), measures what the compression bought and
writes a self-contained run folder that ``export`` (ONNX fp32/INT8), ``serve`` (BentoML) and
``benchmarks`` consume.
"""

__version__ = "0.3.2"
