%% Stops the node at once on SIGTERM. OTP's own handler calls init:stop(), an orderly shutdown
%% that takes about a second; nothing here is worth that wait.
-module(c2m_peer_signal).
-behaviour(gen_event).
-export([install/0, init/1, handle_event/2, handle_call/2]).

install() ->
    ok = gen_event:add_handler(erl_signal_server, ?MODULE, []),
    os:set_signal(sigterm, handle).

init(_) -> {ok, none}.

handle_event(sigterm, _) -> erlang:halt(0);
handle_event(_, State) -> {ok, State}.

handle_call(_, State) -> {ok, ok, State}.
