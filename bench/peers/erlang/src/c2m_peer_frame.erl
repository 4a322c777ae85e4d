%% The HELLO/PING/ECHO part of c2m's wire protocol v1, as c2m serve answers it: same frames,
%% same ERROR codes and texts, same order of rules. Pure: bytes in, replies out.
-module(c2m_peer_frame).
-export([on_bytes/3]).

-define(MAX_FRAME, 4096). % c2m serve's default --max-frame
-define(HEARTBEAT_MS, 30000). % what c2m serve announces; this peer never times a session out

%% Handles the whole frames at the start of Bin. Returns {open | close, Replies (iodata),
%% Rest (a partial frame, kept for the next read), LoggedIn}. A bad header is refused as soon
%% as its bytes are there, as c2m does, not once the frame is whole.
on_bytes(Bin, LoggedIn, SessionId) ->
    frames(Bin, LoggedIn, SessionId, []).

frames(<<Len:16/little, _/binary>>, LoggedIn, _, Acc) when Len < 4; Len > ?MAX_FRAME ->
    fatal(2, LoggedIn, Acc);
frames(<<_:16, Kind, _/binary>> = Bin, LoggedIn, Id, Acc) ->
    case bounds(Kind) of
        unknown -> fatal(3, LoggedIn, Acc);
        {Min, Max} -> header(Bin, Min, Max, LoggedIn, Id, Acc)
    end;
frames(Rest, LoggedIn, _, Acc) ->
    {open, lists:reverse(Acc), Rest, LoggedIn}.

header(<<_:16, _, Flags, _/binary>>, _, _, LoggedIn, _, Acc) when Flags =/= 0 ->
    fatal(1, LoggedIn, Acc);
header(<<Len:16/little, Kind, 0, Rest/binary>> = Bin, Min, Max, LoggedIn, Id, Acc) ->
    PayloadLen = Len - 4,
    case Rest of
        <<Payload:PayloadLen/binary, Tail/binary>> when PayloadLen >= Min, PayloadLen =< Max ->
            case answer(Kind, Payload, LoggedIn, Id) of
                {ok, Reply, LoggedIn1} -> frames(Tail, LoggedIn1, Id, [Reply | Acc]);
                {close, Reply} -> {close, lists:reverse([Reply | Acc]), <<>>, LoggedIn}
            end;
        <<_:PayloadLen/binary, _/binary>> -> fatal(1, LoggedIn, Acc);
        _ -> {open, lists:reverse(Acc), Bin, LoggedIn}
    end;
header(Bin, _, _, LoggedIn, _, Acc) ->
    {open, lists:reverse(Acc), Bin, LoggedIn}.

%% Payload bounds per kind.
bounds(16#01) -> {16, 16};              % HELLO
bounds(16#81) -> {20, 20};              % WELCOME
bounds(16#02) -> {16, 16};              % PING
bounds(16#82) -> {16, 16};              % PONG
bounds(16#03) -> {0, ?MAX_FRAME};       % ECHO
bounds(16#83) -> {0, ?MAX_FRAME};       % ECHO_REPLY
bounds(16#04) -> {24, ?MAX_FRAME};      % SEND
bounds(16#84) -> {8, 8};                % ACK
bounds(16#85) -> {24, ?MAX_FRAME};      % DELIVER
bounds(16#05) -> {16, 16};              % RECEIPT
bounds(16#86) -> {16, 16};              % RECEIPT notice
bounds(16#87) -> {10, 10};              % NACK
bounds(16#06) -> {0, 0};                % BYE
bounds(16#FF) -> {2, ?MAX_FRAME};       % ERROR
bounds(_) -> unknown.

client_kind(K) -> lists:member(K, [16#01, 16#02, 16#03, 16#04, 16#05, 16#06]).

answer(16#01, _, false, Id) ->
    Now = os:system_time(nanosecond),
    {ok, <<24:16/little, 16#81, 0, Id:64/little, Now:64/little, ?HEARTBEAT_MS:32/little>>, true};
answer(16#01, _, true, _) -> {close, error_frame(1)}; % a second HELLO
answer(Kind, Payload, LoggedIn, _) ->
    case {client_kind(Kind), LoggedIn} of
        {false, _} -> {close, error_frame(3)};
        {true, false} -> {close, error_frame(4)};
        {true, true} -> logged_in(Kind, Payload)
    end.

%% PONG and ECHO_REPLY carry the request's payload unchanged.
logged_in(Kind, Payload) when Kind =:= 16#02; Kind =:= 16#03 ->
    {ok, [<<(byte_size(Payload) + 4):16/little, (Kind bor 16#80), 0>>, Payload], true};
logged_in(16#04, <<_:8/binary, MsgId:8/binary, _/binary>>) ->
    % No routing, as in c2m serve: NACK 7, unknown recipient.
    {ok, <<14:16/little, 16#87, 0, MsgId/binary, 7:16/little>>, true};
logged_in(16#06, _) -> {close, []}; % BYE
logged_in(_, _) -> {ok, [], true}.  % RECEIPT: nothing to route

fatal(Code, LoggedIn, Acc) ->
    {close, lists:reverse([error_frame(Code) | Acc]), <<>>, LoggedIn}.

error_frame(Code) ->
    Text = element(Code, {<<"malformed">>, <<"frame_size">>, <<"unknown_kind">>, <<"not_logged_in">>}),
    <<(byte_size(Text) + 6):16/little, 16#FF, 0, Code:16/little, Text/binary>>.
