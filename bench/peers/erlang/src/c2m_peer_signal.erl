%% How the node stops: at once on SIGTERM (OTP's own handler calls init:stop(), an orderly
%% shutdown that takes about a second; nothing here is worth that wait), and when the bin/erlang
%% wrapper that started it is gone (SIGKILLed), so that no node outlives its wrapper.
-module(c2m_peer_signal).
-behaviour(gen_event).
-export([install/0, init/1, handle_event/2, handle_call/2]).

-define(PARENT_CHECK_MS, 500).

install() ->
    ok = gen_event:add_handler(erl_signal_server, ?MODULE, []),
    os:set_signal(sigterm, handle),
    Parent = parent(),
    spawn(fun() -> watch_parent(Parent) end).

init(_) -> {ok, none}.

handle_event(sigterm, _) -> erlang:halt(0);
handle_event(_, State) -> {ok, State}.

handle_call(_, State) -> {ok, ok, State}.

%% The parent pid, from /proc/self/stat ("pid (comm) state ppid ..."; comm may hold spaces).
parent() ->
    {ok, Stat} = file:read_file("/proc/self/stat"),
    [_, AfterComm] = string:split(Stat, ")", trailing),
    [_State, Ppid | _] = string:lexemes(AfterComm, " "),
    binary_to_integer(Ppid).

watch_parent(Parent) ->
    timer:sleep(?PARENT_CHECK_MS),
    case parent() of
        Parent -> watch_parent(Parent);
        _ -> erlang:halt(0) % re-parented: the wrapper is gone
    end.
