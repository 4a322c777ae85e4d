%% One process per connection, as Erlang servers are written: {active, once}, so the socket
%% sends one message at a time and the process is never flooded.
-module(c2m_peer_conn).
-export([start/1]).

-define(LAST_WORDS_MS, 5000).

%% Spawned by an acceptor, which hands over the socket with {socket, Sock}.
start(SessionId) ->
    receive
        {socket, Sock} ->
            ok = inet:setopts(Sock, [{active, once}]),
            loop(Sock, <<>>, false, SessionId)
    end.

loop(Sock, Buf, LoggedIn, Id) ->
    receive
        {tcp, Sock, Data} ->
            {Verdict, Replies, Rest, LoggedIn1} = c2m_peer_frame:on_bytes(<<Buf/binary, Data/binary>>, LoggedIn, Id),
            case gen_tcp:send(Sock, Replies) of
                ok when Verdict =:= open ->
                    ok = inet:setopts(Sock, [{active, once}]),
                    loop(Sock, Rest, LoggedIn1, Id);
                ok -> last_words(Sock);
                {error, _} -> gen_tcp:close(Sock)
            end;
        {tcp_closed, Sock} -> ok;
        {tcp_error, Sock, _} -> gen_tcp:close(Sock)
    end.

%% After ERROR or BYE: FIN, then read and drop what the client still sends until it closes
%% (at most 5 s), so the close never meets unread data and becomes a RST that could destroy the
%% ERROR in flight. c2m serve does the same.
last_words(Sock) ->
    gen_tcp:shutdown(Sock, write),
    Deadline = erlang:monotonic_time(millisecond) + ?LAST_WORDS_MS,
    drain(Sock, Deadline).

drain(Sock, Deadline) ->
    inet:setopts(Sock, [{active, once}]),
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {tcp, Sock, _} -> drain(Sock, Deadline);
        {tcp_closed, Sock} -> ok;
        {tcp_error, Sock, _} -> gen_tcp:close(Sock)
    after Left -> gen_tcp:close(Sock)
    end.
