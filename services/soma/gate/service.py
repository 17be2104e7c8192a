"""GateService over a sentence encoder φ (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import grpc

from soma.algo import gate_stats
from soma.algo.compression import compressed_messages
from soma.config import GateSettings
from soma.errors import InvalidArgument
from soma.server.app import HostedService
from soma.v1 import gate_pb2, gate_pb2_grpc
from soma.wire import messages_to_proto

_BOUNDS = {
    gate_pb2.BOUND_HOEFFDING: "hoeffding",
    gate_pb2.BOUND_BERNSTEIN: "bernstein",
    gate_pb2.BOUND_NONE: "none",
}


class GateServicer(gate_pb2_grpc.GateServiceServicer):
    def __init__(self, encoder: object, settings: GateSettings):
        self.encoder = encoder
        self.settings = settings

    def _check_texts(self, field: str, texts: list[str]) -> None:
        for i, text in enumerate(texts):
            if len(text) > self.settings.max_text_chars:
                raise InvalidArgument(
                    f"{field}[{i}] has {len(text)} characters; the limit is {self.settings.max_text_chars}"
                )

    def _check_batch(self, field: str, size: int) -> None:
        if size == 0:
            raise InvalidArgument(f"{field} is empty")
        if size > self.settings.max_pairs:
            raise InvalidArgument(f"{field} has {size} items; the limit is {self.settings.max_pairs}")

    def Gap(self, request: gate_pb2.GapRequest, context: grpc.ServicerContext) -> gate_pb2.GapResponse:
        self._check_batch("pairs", len(request.pairs))
        pairs = [(p.a, p.b) for p in request.pairs]
        self._check_texts("pairs", [t for pair in pairs for t in pair])
        return gate_pb2.GapResponse(gaps=self.encoder.gaps(pairs))

    def _locality(self, query: str, warm: list[str]) -> float | None:
        if not query or not warm:
            return None
        self._check_batch("warm_queries", len(warm))  # soma bench fuzz: 4,000 queries held the encoder 5 s
        self._check_texts("warm_queries", [query, *warm])
        emb = self.encoder.encode([query, *warm])
        return gate_stats.locality(emb[0], emb[1:])

    def Accept(self, request: gate_pb2.AcceptRequest, context: grpc.ServicerContext) -> gate_pb2.AcceptResponse:
        self._check_batch("batch", len(request.batch))
        bound = _BOUNDS.get(request.bound)
        if bound is None:
            raise InvalidArgument("bound must be HOEFFDING, BERNSTEIN or NONE")
        if not 0.0 < request.delta < 1.0:
            raise InvalidArgument(f"delta={request.delta} must be in (0, 1)")
        if request.min_locality > 0 and not (request.current_query and request.warm_queries):
            raise InvalidArgument("min_locality needs current_query and warm_queries")
        batch = list(request.batch)
        self._check_texts("batch", [t for e in batch for t in (e.teacher_answer, e.old_answer, e.new_answer)])
        gaps = self.encoder.gaps(
            [(e.teacher_answer, e.old_answer) for e in batch] + [(e.teacher_answer, e.new_answer) for e in batch]
        )
        gap_old, gap_new = gaps[: len(batch)], gaps[len(batch) :]
        decision = gate_stats.accept(
            gap_old,
            gap_new,
            epsilon=request.epsilon,
            delta=request.delta,
            bound=bound,
            max_mean_gap=request.max_mean_gap,
            locality_value=self._locality(request.current_query, list(request.warm_queries)),
            min_locality=request.min_locality,
        )
        return gate_pb2.AcceptResponse(
            accepted=decision.accepted,
            mean_improvement=decision.mean_improvement,
            bound=decision.bound,
            mean_gap_new=decision.mean_gap_new,
            locality=decision.locality or 0.0,
            reason=decision.reason,
        )

    def ObserveTurn(
        self, request: gate_pb2.ObserveTurnRequest, context: grpc.ServicerContext
    ) -> gate_pb2.ObserveTurnResponse:
        if not request.query:
            raise InvalidArgument("query is empty")
        if not request.warm_queries:
            raise InvalidArgument("warm_queries is empty: the drift check compares against them")
        value = self._locality(request.query, list(request.warm_queries))
        response = gate_pb2.ObserveTurnResponse(locality=value, locality_ok=value >= request.min_locality)
        if request.HasField("shadow"):
            self._check_texts("shadow", [request.shadow.a, request.shadow.b])
            gap = self.encoder.gaps([(request.shadow.a, request.shadow.b)])[0]
            response.gap = gap
            response.gap_ok = request.max_gap <= 0 or gap <= request.max_gap
        return response

    def Compress(self, request: gate_pb2.CompressRequest, context: grpc.ServicerContext) -> gate_pb2.CompressResponse:
        if not request.query:
            raise InvalidArgument("query is empty")
        # any history length: only the recent turns and the last max_summarized_turns older ones are read,
        # so a 10,000-turn session costs what a 70-turn one does (the message size limit still applies)
        history = [(t.a, t.b) for t in request.turns]
        window = request.max_summarized_turns or 64
        read = history[-(window + request.recent_turns) :]
        self._check_texts("turns", [text for pair in read for text in pair] + [request.query])
        place = "system" if request.summary_place == gate_pb2.SUMMARY_PLACE_SYSTEM else "first_user"
        messages = compressed_messages(
            read,
            request.query,
            recent_turns=request.recent_turns,
            summary_chars=request.summary_chars,
            encode=self.encoder.encode,
            system_prompt=request.system_prompt,
            place=place,
            max_summarized_turns=window,
        )
        response = gate_pb2.CompressResponse(
            messages=messages_to_proto(messages),
            summarized_turns=max(0, min(window, len(history) - request.recent_turns)),
        )
        if request.HasField("observe"):
            response.observed.CopyFrom(self.ObserveTurn(request.observe, context))
        return response


def hosted(encoder: object, settings: GateSettings) -> HostedService:
    servicer = GateServicer(encoder, settings)
    return HostedService(
        name=gate_pb2.DESCRIPTOR.services_by_name["GateService"].full_name,
        register=lambda server: gate_pb2_grpc.add_GateServiceServicer_to_server(servicer, server),
    )
