"""`melodylstm studio`: play to the model in one window, call and response.

Layers, each usable without the ones above it:

* `session`: the piece, no window and no sound: phrases (played or loaded) and answers as notes
  in seconds on the session's clock, its tempo map and metre, undo, the primer the model
  continues, and saving (MIDI with phrases and answers on separate tracks, and WAV).
      s = Session(); s.add_note(60, 0.0, 0.5); s.answer(Generator.load()); s.save("take1")
* `answers`: answers sampled in a child process (`SamplerProcess`; a thread where no process can
  start), placed on the session's clock as their notes arrive (`Answerer`).
* `audio`: one continuous stream for answers, files and the metronome; keys on their own channels.
* `window` and `view`: the pygame window, its event loop and what it draws; `run_studio`.
"""
from .answers import (AnswerJob, Answerer, SamplerProcess, SamplerThread, available_styles, check_controls,
                      sample_answer, supported_controls)
from .audio import Audio, KeySounds, NullAudio, open_audio
from .session import (ANSWER_TRACK, PHRASE_TRACK, SAVE_RESOLUTION, TICKS, Part, Placement, Session,
                      load_phrase, render_file_wav, render_in_child)
from .view import Canvas
from .window import Studio, default_folder, run_studio

__all__ = ["ANSWER_TRACK", "PHRASE_TRACK", "SAVE_RESOLUTION", "TICKS", "AnswerJob", "Answerer", "Audio", "Canvas",
           "KeySounds", "NullAudio", "Part", "Placement", "SamplerProcess", "SamplerThread", "Session",
           "Studio", "available_styles", "check_controls", "default_folder", "load_phrase", "open_audio",
           "render_file_wav", "render_in_child", "run_studio", "sample_answer", "supported_controls"]
