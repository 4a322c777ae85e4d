%% Erlang/OTP peer: the 2012 record's stack. A gen_tcp listener (SO_REUSEPORT, so several BEAM
%% nodes can share the port), a pool of acceptor processes, one process per connection.
%%
%% Started by the bin/erlang wrapper: erl -noinput +S N:N -s c2m_peer main -extra --listen IP:PORT
%% [--workers N]. The schedulers (N) are set by the wrapper, since they are fixed at boot.
-module(c2m_peer).
-export([main/0]).

-define(SOL_SOCKET, 1).
-define(SO_REUSEPORT, 15). % Linux; OTP 25's gen_tcp has no reuseport option yet
-define(MIN_ACCEPTORS, 10). % ranch's default pool

main() ->
    {Ip, Port} = parse_args(init:get_plain_arguments(), undefined),
    c2m_peer_signal:install(),
    Main = self(),
    % The listener's owner lives on after main/0 returns; the socket closes with its owner.
    spawn(fun() -> listen(Ip, Port, Main) end),
    receive
        {ready, Addr} ->
            io:format("READY ~s~n", [Addr]);
        {failed, Why} ->
            io:format(standard_error, "erlang peer: listen: ~p~n", [Why]),
            erlang:halt(1)
    end.

usage(Why) ->
    io:format(standard_error, "erlang peer: ~s~nusage: erlang --listen IP:PORT [--workers N]~n", [Why]),
    erlang:halt(2).

parse_args([], undefined) -> usage("--listen IP:PORT is required");
parse_args([], Listen) -> Listen;
parse_args(["--listen", Value | Rest], _) -> parse_args(Rest, parse_addr(Value));
parse_args(["--listen=" ++ Value | Rest], _) -> parse_args(Rest, parse_addr(Value));
parse_args(["--workers", _ | Rest], Listen) -> parse_args(Rest, Listen);
parse_args(["--workers=" ++ _ | Rest], Listen) -> parse_args(Rest, Listen);
parse_args([Other | _], _) -> usage(io_lib:format("unknown argument ~p", [Other])).

parse_addr(Text) ->
    {Host, [$: | PortText]} = lists:splitwith(fun(C) -> C =/= $: end, lists:reverse(Text)),
    HostText = string:trim(lists:reverse(PortText), both, "[]"),
    case {inet:parse_address(HostText), string:to_integer(lists:reverse(Host))} of
        {{ok, Ip}, {Port, []}} -> {Ip, Port};
        _ -> usage("bad --listen " ++ Text)
    end.

listen(Ip, Port, Main) ->
    Opts = [binary, {packet, raw}, {active, false}, {ip, Ip}, {backlog, 4096},
            {reuseaddr, true}, {raw, ?SOL_SOCKET, ?SO_REUSEPORT, <<1:32/native>>},
            {nodelay, true}],
    case gen_tcp:listen(Port, Opts) of
        {ok, LSock} ->
            Acceptors = max(?MIN_ACCEPTORS, erlang:system_info(schedulers)),
            [spawn_link(fun() -> accept(LSock) end) || _ <- lists:seq(1, Acceptors)],
            {ok, {BoundIp, BoundPort}} = inet:sockname(LSock),
            Main ! {ready, format_addr(BoundIp, BoundPort)},
            receive stop -> ok end;
        {error, Why} ->
            Main ! {failed, Why}
    end.

format_addr(Ip, Port) when tuple_size(Ip) =:= 8 -> io_lib:format("[~s]:~b", [inet:ntoa(Ip), Port]);
format_addr(Ip, Port) -> io_lib:format("~s:~b", [inet:ntoa(Ip), Port]).

accept(LSock) ->
    case gen_tcp:accept(LSock) of
        {ok, Sock} ->
            Pid = spawn(c2m_peer_conn, start, [erlang:unique_integer([positive])]),
            case gen_tcp:controlling_process(Sock, Pid) of
                ok -> Pid ! {socket, Sock};
                {error, _} -> gen_tcp:close(Sock), exit(Pid, kill)
            end,
            accept(LSock);
        {error, closed} ->
            ok;
        {error, Why} ->
            % emfile and the like: back off instead of spinning on the same error.
            io:format(standard_error, "erlang peer: accept: ~p~n", [Why]),
            timer:sleep(10),
            accept(LSock)
    end.
