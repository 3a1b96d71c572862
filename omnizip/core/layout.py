"""Where the audio and video tokens of one sequence are (algorithm §1).

The layout is read once per call on the host: one device->host copy of the ids (the only
data-dependent shapes OmniZip needs), after which every tensor size is known and the rest of
the algorithm runs on the device without synchronising.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .validate import INT64_MAX


def find_runs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximal runs of ``True`` in a 1-D bool CPU tensor.

    Returns ``(starts, lengths)``, both int64 ``[n_runs]``, in order of position.
    """
    as_int = mask.to(torch.int8)
    edges = torch.diff(as_int, prepend=as_int.new_zeros(1), append=as_int.new_zeros(1))
    starts = torch.nonzero(edges == 1).flatten()
    ends = torch.nonzero(edges == -1).flatten()
    return starts, ends - starts


def exclusive_cumsum(values: torch.Tensor) -> torch.Tensor:
    """``[0, v0, v0+v1, ...]`` without the total: the start offset of each segment."""
    return torch.cumsum(values, 0) - values


def segment_ids(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments of the given lengths laid end to end, each element's segment id and its
    index inside the segment. ``lengths`` int64 ``[n]`` -> two int64 ``[sum(lengths)]``."""
    ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    local = torch.arange(ids.numel(), device=lengths.device) - exclusive_cumsum(lengths)[ids]
    return ids, local


@dataclass(frozen=True)
class FrameTable:
    """The whole frames of all video chunks (algorithm §4 step 8), in order.

    All tensors are int64 on the CPU, ``[n_frames]``, except ``video_index`` ``[n_frames, P]``.
    A chunk's trailing partial frame is not a frame here: its tokens are always kept
    (algorithm §6.3).
    """

    chunk: torch.Tensor  # video chunk of each frame
    parity: torch.Tensor  # frame index in its chunk (or stream), modulo 2 (0 spatial, 1 temporal)
    tokens: int  # P, tokens per frame (the same for every frame of this table)
    video_index: torch.Tensor  # [n_frames, P] indices into the video tokens (0..N_v-1)


@dataclass(frozen=True)
class SequenceLayout:
    """Token spans of one sequence. Host (CPU) tensors unless noted.

    Attributes:
        audio_positions, video_positions: int64 ``[N_a]`` / ``[N_v]`` sequence positions.
        audio_chunk_starts, audio_chunk_lengths: int64 ``[n]``, maximal audio runs ``A_i``.
        video_chunk_starts, video_chunk_lengths: int64 ``[m]``, maximal video runs ``V_i``.
        audio_chunk_of_token: int64 ``[N_a]`` chunk id of each audio token.
        tokens_per_frame: int64 ``[m]`` P of each video chunk.
        frame_tables: one :class:`FrameTable` per distinct P (usually one).
    """

    length: int
    audio_positions: torch.Tensor
    video_positions: torch.Tensor
    audio_chunk_starts: torch.Tensor
    audio_chunk_lengths: torch.Tensor
    video_chunk_starts: torch.Tensor
    video_chunk_lengths: torch.Tensor
    audio_chunk_of_token: torch.Tensor
    tokens_per_frame: torch.Tensor
    frame_tables: tuple[FrameTable, ...]

    @property
    def n_audio(self) -> int:
        return int(self.audio_positions.numel())

    @property
    def n_video(self) -> int:
        return int(self.video_positions.numel())

    @property
    def n_audio_chunks(self) -> int:
        return int(self.audio_chunk_starts.numel())

    @property
    def n_video_chunks(self) -> int:
        return int(self.video_chunk_starts.numel())

    @property
    def n_guided(self) -> int:
        """G = min(m, n): windows that pair a video chunk with an audio chunk (algorithm §1)."""
        return min(self.n_audio_chunks, self.n_video_chunks)

    @property
    def frames_per_chunk(self) -> torch.Tensor:
        """int64 ``[m]``: whole frames in each video chunk."""
        return self.video_chunk_lengths // self.tokens_per_frame


def _tokens_per_frame_per_chunk(tokens_per_frame, n_chunks: int) -> torch.Tensor:
    if isinstance(tokens_per_frame, bool):
        raise TypeError(f"tokens_per_frame must be a positive int, got bool {tokens_per_frame}")
    if isinstance(tokens_per_frame, int):
        if tokens_per_frame <= 0:
            raise ValueError(f"tokens_per_frame must be a positive int, got {tokens_per_frame}")
        if tokens_per_frame > INT64_MAX:
            raise ValueError(f"tokens_per_frame must fit in int64, got {tokens_per_frame}")
        return torch.full((n_chunks,), tokens_per_frame, dtype=torch.int64)
    if isinstance(tokens_per_frame, torch.Tensor):
        if tokens_per_frame.is_floating_point() or tokens_per_frame.is_complex():
            raise TypeError(
                f"tokens_per_frame must hold integers, got dtype {tokens_per_frame.dtype}"
            )
        values = tokens_per_frame.detach().to("cpu", torch.int64).flatten()
    elif isinstance(tokens_per_frame, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in tokens_per_frame):
            raise TypeError(f"tokens_per_frame must be ints, got {tokens_per_frame!r}")
        if any(v > INT64_MAX for v in tokens_per_frame):
            raise ValueError(f"tokens_per_frame must fit in int64, got {tokens_per_frame!r}")
        values = torch.tensor(list(tokens_per_frame), dtype=torch.int64)
    else:
        raise TypeError(
            "tokens_per_frame must be an int or one int per video chunk, "
            f"got {type(tokens_per_frame).__name__}"
        )
    if values.numel() != n_chunks:
        raise ValueError(
            f"tokens_per_frame has {values.numel()} values but the sequence has {n_chunks} "
            "video chunks (maximal runs of video tokens); give one int, or one per chunk"
        )
    if n_chunks and int(values.min()) <= 0:
        raise ValueError(f"tokens_per_frame must be positive, got {values.tolist()}")
    return values


def video_streams(
    is_audio: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, tokens_per_frame: torch.Tensor
) -> torch.Tensor:
    """Stream id of each video chunk: consecutive chunks separated only by audio tokens (an
    interleaved audio-video block) and of the same resolution form one stream.

    Args:
        is_audio: bool ``[L]`` host; starts, lengths, tokens_per_frame: int64 ``[m]`` host.
    Returns:
        int64 ``[m]``.
    """
    if starts.numel() == 0:
        return starts.clone()
    audio_before = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(is_audio, 0)])
    gap_start, gap_end = (starts + lengths)[:-1], starts[1:]
    only_audio = (audio_before[gap_end] - audio_before[gap_start]) == (gap_end - gap_start)
    same_p = tokens_per_frame[1:] == tokens_per_frame[:-1]
    new_stream = torch.cat([torch.ones(1, dtype=torch.bool), ~(only_audio & same_p)])
    return torch.cumsum(new_stream.to(torch.int64), 0) - 1


def build_layout(
    input_ids: torch.Tensor,
    audio_token_id: int,
    video_token_id: int,
    tokens_per_frame,
    frame_parity: str = "chunk",
    first_stream_offset: int = 0,
) -> SequenceLayout:
    """Read the windows and frames of one sequence from its ids (algorithm §1, 4 step 8).

    Args:
        input_ids: integer ``[L]`` (any device; copied to the host once).
        tokens_per_frame: int P, or one P per video chunk.
        frame_parity: ``"chunk"`` (reference: frame parity restarts at 0 in every video
            chunk) or ``"stream"`` (parity counts along each interleaved audio-video stream,
            see :func:`video_streams`, and an odd frame's previous frame may sit in the
            previous chunk). ``"stream"`` is for layouts with one frame per chunk
            (Qwen3-Omni), where per-chunk parity would never run the temporal step.
        first_stream_offset: with ``"stream"``, whole frames the first stream already had
            before this sequence (a causal stream continued from its history, algorithm §9):
            its frames count on from there. 0 (the default) for a sequence on its own.
    """
    ids = input_ids.detach().to("cpu")
    is_audio = ids == audio_token_id
    is_video = ids == video_token_id
    audio_positions = torch.nonzero(is_audio).flatten()
    video_positions = torch.nonzero(is_video).flatten()
    a_starts, a_lengths = find_runs(is_audio)
    v_starts, v_lengths = find_runs(is_video)
    per_chunk_p = _tokens_per_frame_per_chunk(tokens_per_frame, int(v_starts.numel()))

    audio_chunk_of_token, _ = segment_ids(a_lengths)

    # Whole frames: chunk i holds F_i = |V_i| // P_i of them.
    frames = v_lengths // per_chunk_p
    frame_chunk, frame_in_chunk = segment_ids(frames)
    frame_order = frame_in_chunk  # what parity counts: position in the chunk, or the stream
    if frame_parity == "stream":
        stream = video_streams(is_audio, v_starts, v_lengths, per_chunk_p)
        per_stream = torch.zeros(int(stream.max()) + 1 if stream.numel() else 0, dtype=torch.int64)
        per_stream.index_add_(0, stream, frames)
        frame_stream = stream[frame_chunk]
        frame_order = torch.arange(frame_chunk.numel()) - exclusive_cumsum(per_stream)[frame_stream]
        if first_stream_offset:
            frame_order = frame_order + first_stream_offset * (frame_stream == 0)
    elif frame_parity != "chunk":
        raise ValueError(f'frame_parity must be "chunk" or "stream", got {frame_parity!r}')
    chunk_video_offset = exclusive_cumsum(v_lengths)
    frame_p = per_chunk_p[frame_chunk]
    frame_first = chunk_video_offset[frame_chunk] + frame_in_chunk * frame_p
    tables = []
    for p in torch.unique(per_chunk_p).tolist():  # distinct resolutions: a handful at most
        sel = frame_p == p
        if not bool(sel.any()):
            continue
        first = frame_first[sel]
        tables.append(
            FrameTable(
                chunk=frame_chunk[sel],
                parity=frame_order[sel] % 2,
                tokens=int(p),
                video_index=first[:, None] + torch.arange(p)[None, :],
            )
        )
    return SequenceLayout(
        length=int(ids.numel()),
        audio_positions=audio_positions,
        video_positions=video_positions,
        audio_chunk_starts=a_starts,
        audio_chunk_lengths=a_lengths,
        video_chunk_starts=v_starts,
        video_chunk_lengths=v_lengths,
        audio_chunk_of_token=audio_chunk_of_token,
        tokens_per_frame=per_chunk_p,
        frame_tables=tuple(tables),
    )
