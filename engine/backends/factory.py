"""Which backend reads the configured model file. Imported only inside replica processes: the parent never loads
a model library."""

from __future__ import annotations

from engine.backends.base import Backend
from engine.backends.llama_batch import BatchedLlama
from engine.backends.llama_cpp import LlamaCppBackend
from engine.config import EngineSettings


def make_backend(settings: EngineSettings) -> Backend | BatchedLlama:
    """ctransformers for legacy GGML files; for GGUF, the batched llama.cpp backend with PARALLEL_SLOTS > 1, else
    llama-cpp-python's own single-sequence path."""
    if settings.model_backend == "ctransformers":
        from engine.backends.ctransformers import CTransformersBackend

        return CTransformersBackend(
            settings.model_path,
            model_type=settings.model_type,
            lib=settings.llm_lib,
            # (its thread count is fixed at load: with NUM_THREADS=auto, an equal share of the CPUs)
            threads=max(1, settings.num_threads // settings.num_workers) if settings.adaptive_threads
            else settings.num_threads,
            context_length=settings.context_length,
        )
    if settings.parallel_slots > 1:
        return BatchedLlama(settings.model_path, threads=settings.num_threads, context_length=settings.context_length,
                            slots=settings.parallel_slots, kv_cache_type=settings.kv_cache_type,
                            flash_attn=settings.flash_attn, kv_tokens=settings.kv_cache_tokens,
                            step_target_s=settings.prefill_step_ms / 1000)
    return LlamaCppBackend(settings.model_path, threads=settings.num_threads, context_length=settings.context_length,
                           kv_cache_type=settings.kv_cache_type, flash_attn=settings.flash_attn)
