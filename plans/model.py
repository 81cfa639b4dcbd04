"""The plan model: what a plan file may say, as frozen msgspec Structs.

A plan names a team of agents and, optionally, a fixed graph of steps. The same model comes
from TOML, YAML, JSON (``plans.load``) or Python (``plans.builder``); ``plans.validate``
checks it before any socket opens. A complete TOML plan, annotated::

    version = 1                        # optional; the only format so far
    name = "trip"                      # required: names the run and its job
    goal = "Plan a 3-day trip to Lisbon"   # optional default goal (`run(plan, goal)` overrides)
    final_step = "report"              # optional (steps mode): the step whose result is the
                                       # answer; only it and what it depends on are scheduled

    [settings]
    model = "gpt-5-mini"               # default model of agents that name none
    store = false                      # Responses API `store`; false replays context locally
    base_url = "https://api.openai.com/v1"   # optional endpoint, as the SDK's base_url
    transport = "auto"                 # websocket | http | auto (default: websocket for
                                       # the service, auto for any other base_url)
    context = "step"                   # steps mode: each step a fresh conversation (default)
                                       # | "agent": one conversation per agent, all its steps
    # Model settings, the defaults of every agent (an agent's [agents.settings] overrides
    # them field by field; run(model_settings=...) fills what neither sets). Sent verbatim.
    reasoning = { effort = "low", summary = "auto" }   # effort: none | minimal | low |
                                       # medium | high | xhigh; summary: auto | concise | detailed
    temperature = 0.2                  # 0..2
    top_p = 1.0                        # 0..1
    max_output_tokens = 4000           # 16..1000000; a longer answer ends `incomplete`
    max_tool_calls = 20                # 1..1000, per response
    tool_choice = "auto"               # auto | none | required (per agent also a tool name)
    parallel_tool_calls = true         # false: at most one tool call per response
    truncation = "auto"                # auto: the service drops the oldest items when the
                                       # conversation outgrows the context | disabled
    service_tier = "flex"              # auto | default | flex | priority | scale
    verbosity = "low"                  # text.verbosity: low | medium | high
    metadata = { team = "trip" }       # up to 16 string pairs
    prompt_cache_key = "trip"

    [budgets]                          # per run; leave a field out for no plan-level limit
    max_turns = 200                    # model turns, all agents together (1..100000)
    max_tokens = 500000                # input + output tokens (1..1000000000)
    wall_clock = 600                   # seconds (0 < x <= 604800)

    [tools.search_flights]             # optional per-tool options; the key is the name the
    path = "orchestrator.examples.trip.tools:search_flights"   # model sees; path is module:function
    timeout = 10                       # seconds (0 < x <= 3600); unset: the tool's own or 30
    max_output = 16384                 # bytes returned to the model (256..1048576)
    side_effect = "read_only"          # read_only | idempotent_write | non_idempotent |
                                       # destructive | external (those two need an approval)
    description = "Search flights."    # optional override of the docstring

    [mcp_servers.docs]                 # an MCP server whose tools agents may call
    command = "python"                 # stdio: the server's program, its args and env...
    args = ["-m", "docs_server"]
    env = { DOCS_TOKEN = "${DOCS_TOKEN}" }   # ${NAME}: taken from the environment at start
    # url = "https://mcp.example.org/mcp"    # ...or streamable HTTP, with headers whose
    # headers = { Authorization = "Bearer ${DOCS_TOKEN}" }   values come from the environment
    tools = ["search", "fetch"]        # optional allow-list; exclude_tools = [...] a deny-list
    prefix = "docs_"                   # optional: the model sees docs_search, docs_fetch
    timeout = 30                       # seconds per call; max_output as for tools
    side_effects = { fetch = "idempotent_write" }   # raise a tool's class (never lower it)

    [approvals]                        # calls of destructive and external tools
    allow = ["flights:book_flight"]    # run without asking: "tool" or "agent:tool", * and ?
    deny = ["*:cancel_*"]              # refused without asking; deny wins over allow
    otherwise = "ask"                  # ask (a person, in an interactive run; else denied)
                                       # | deny

    [[agents]]
    name = "planner"                   # [A-Za-z][A-Za-z0-9_-]{0,63}, unique
    role = "planner"                   # planner | worker (default worker)
    instructions = "Split the goal, delegate, then answer."
    # The runtime gives the planner its delegation tools (one per worker); they are not listed.
    [agents.limits]                    # per agent, same fields as [budgets]
    max_turns = 50

    [[agents]]
    name = "flights"
    description = "Finds flights."     # what the planner is told about this worker
    model = "gpt-5"                    # overrides settings.model
    instructions = "You find flights."
    tools = [                          # the agent's allow-list: nothing else is callable
        "search_flights",                               # a name defined under [tools]
        "orchestrator.examples.trip.tools:search_hotels",      # or an import path (default options;
    ]                                                   # the model sees `search_hotels`)
    mcp_servers = ["docs"]             # the servers whose tools it may call
    hosted_tools = [                   # the service's own tools, sent verbatim
        { type = "web_search" },       # web_search | file_search (vector_store_ids) |
        { type = "file_search", vector_store_ids = ["vs_123"] },   # code_interpreter |
    ]                                  # image_generation | mcp (server_label, server_url...)
    output_type = "orchestrator.examples.triage.outputs:Ticket"   # optional: the agent answers
                                       # JSON of this type (a msgspec Struct, dataclass,
                                       # TypedDict...) or of a JSON Schema given as a table
    [agents.settings]                  # optional: this agent's model settings, over [settings]
    reasoning = { effort = "high" }
    tool_choice = "search_flights"     # its first turn of each task calls this tool

    [[steps]]                          # optional: a DAG instead of (or inside) delegation
    id = "fetch"                       # [A-Za-z][A-Za-z0-9_-]{0,63}, unique
    agent = "flights"
    task = "Find flights for: {{goal}}"

    [[steps]]
    id = "report"
    agent = "planner"
    task = "Write the itinerary from these flights: {{steps.fetch.result}}"
    depends_on = ["fetch"]             # independent steps run in parallel

Rules the validator enforces: a plan without steps needs exactly one planner (it drives the
run); a plan with steps may have at most one planner (steps run without one). A task may
reference ``{{goal}}`` and ``{{steps.ID.result}}`` of any step it (transitively) depends on;
every other ``{{...}}`` is an error, so double braces are reserved in tasks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from orchestrator.core.rules import SideEffect, Transport
from orchestrator.errors import ConfigurationError, PlanError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "LIMITS",
    "Agent",
    "Approvals",
    "Budget",
    "Context",
    "McpServer",
    "ModelOptions",
    "Plan",
    "Reasoning",
    "Reference",
    "Role",
    "Settings",
    "SideEffect",
    "Step",
    "ToolConfig",
    "env_references",
    "expand_environment",
    "render_task",
    "result_steps",
    "scheduled_steps",
    "task_references",
    "tool_name_of_path",
]

Role = Literal["planner", "worker"]

FORMAT_VERSION: Final = 1

# Hard caps: a value outside its range is a plan error (plan.value), never clamped.
LIMITS: Final[Mapping[str, tuple[float, float]]] = {
    "max_turns": (1, 100_000),
    "max_tokens": (1, 1_000_000_000),
    "wall_clock": (0, 7 * 24 * 3600),  # exclusive lower bound: 0 s is not a budget
    "timeout": (0, 3600),  # exclusive lower bound
    "max_output": (256, 1024 * 1024),
}

# Agent names and step ids appear in `{{steps.ID.result}}`, logs and tool names.
NAME_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# What the Responses API accepts as a function name.
TOOL_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Budget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits for the whole run (``[budgets]``) or one agent (``[agents.limits]``).

    ``None`` means no limit at this level; the runtime may still apply its own defaults.
    """

    max_turns: int | None = None
    max_tokens: int | None = None
    wall_clock: float | None = None


Context = Literal["step", "agent"]
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
Summary = Literal["auto", "concise", "detailed"]
Verbosity = Literal["low", "medium", "high"]
Truncation = Literal["auto", "disabled"]
ServiceTier = Literal["auto", "default", "flex", "priority", "scale"]
# The tool_choice modes; any other string names one of the agent's tools.
TOOL_CHOICE_MODES: Final = ("auto", "none", "required")

# Ranges of the model settings (inclusive), as the Responses API accepts them.
SETTING_LIMITS: Final[Mapping[str, tuple[float, float]]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "max_output_tokens": (16, 1_000_000),
    "max_tool_calls": (1, 1_000),
}
MAX_METADATA: Final = 16  # pairs; keys up to 64 characters, values up to 512
# Settings that do not change what the model does (billing, caching, bookkeeping): a resumed
# job may change them.
NEUTRAL_SETTINGS: Final = frozenset(
    {"metadata", "prompt_cache_key", "service_tier", "safety_identifier", "user"}
)


class Reasoning(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``reasoning`` of a reasoning model: how hard it thinks, and what summary it writes."""

    effort: Effort | None = None
    summary: Summary | None = None


class ModelOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Model settings, sent verbatim on every turn of an agent; ``None`` leaves a field to
    the level below (an agent's ``settings``, then the plan's ``[settings]``, then
    ``run(model_settings=...)``, then the service's default).

    ``tool_choice`` is ``auto``, ``none``, ``required``, the name of one of the agent's
    tools, or ``{type = "function", name = "..."}``. ``required`` and a named tool force the
    first turn of each task; the turns after it use ``auto``, so that the agent can answer
    once its tools have run (otherwise it could only ever call tools). ``verbosity`` is
    sent as ``text.verbosity``.
    """

    reasoning: Reasoning | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    tool_choice: str | dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    truncation: Truncation | None = None
    service_tier: ServiceTier | None = None
    verbosity: Verbosity | None = None
    metadata: dict[str, str] | None = None
    prompt_cache_key: str | None = None

    def over(self, base: ModelOptions) -> ModelOptions:
        """These options with ``base``'s where these leave a field unset. ``reasoning``
        and ``metadata`` merge field by field (key by key)."""
        fields: dict[str, Any] = {}
        for name in MODEL_OPTION_FIELDS:
            mine, theirs = getattr(self, name), getattr(base, name)
            if name == "reasoning" and mine is not None and theirs is not None:
                mine = Reasoning(
                    effort=mine.effort if mine.effort is not None else theirs.effort,
                    summary=mine.summary if mine.summary is not None else theirs.summary,
                )
            elif name == "metadata" and mine is not None and theirs is not None:
                mine = {**theirs, **mine}
            fields[name] = mine if mine is not None else theirs
        return ModelOptions(**fields)

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in MODEL_OPTION_FIELDS)


MODEL_OPTION_FIELDS: Final = tuple(ModelOptions.__struct_fields__)


class Settings(ModelOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Run-wide settings, and the defaults of every agent's model settings
    (:class:`ModelOptions`, which an agent's own ``settings`` override).

    ``context``: in steps mode, ``step`` (the default) starts each step as a fresh
    conversation for its agent, with the step's task and the results it depends on;
    ``agent`` keeps one conversation per agent across all its steps (each step sees the
    earlier ones, and the input grows with every step).
    """

    model: str | None = None
    store: bool = False
    base_url: str | None = None
    transport: Transport | None = None
    context: Context = "step"

    @property
    def model_options(self) -> ModelOptions:
        """The plan-wide model settings alone."""
        return ModelOptions(**{name: getattr(self, name) for name in MODEL_OPTION_FIELDS})


class ToolConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Options of one tool. ``None`` options fall back to the tool's own or the defaults."""

    path: str
    timeout: float | None = None
    max_output: int | None = None
    side_effect: SideEffect | None = None
    description: str | None = None


# The service's hosted tools a plan may give an agent (sent verbatim, see docs in README).
HOSTED_TOOL_TYPES: Final = (
    "web_search",
    "web_search_preview",
    "file_search",
    "code_interpreter",
    "image_generation",
    "mcp",
)
# ``${NAME}``: a value taken from the environment when the run starts.
ENV_REFERENCE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def env_references(text: str) -> list[str]:
    """The environment variables ``text`` references (``${NAME}``), in order."""
    return ENV_REFERENCE.findall(text)


def expand_environment(text: str, environ: Mapping[str, str], *, what: str) -> str:
    """``text`` with every ``${NAME}`` replaced by ``environ[NAME]``.

    Raises:
        ConfigurationError: a referenced variable is not set (``what`` says where).
    """
    missing = [name for name in env_references(text) if name not in environ]
    if missing:
        raise ConfigurationError(
            f"{what} takes ${{{missing[0]}}} from the environment, and {missing[0]} is not set",
            code="config.environment",
        )
    return ENV_REFERENCE.sub(lambda match: environ[match.group(1)], text)


class McpServer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An MCP server whose tools agents may call (``[mcp_servers.NAME]``).

    Either ``command`` (stdio: the runtime starts it with ``args``, ``env`` and ``cwd``) or
    ``url`` (streamable HTTP, with ``headers``). Values of ``env`` and ``headers`` may take
    ``${NAME}`` from the environment; header values must (a credential never sits in a plan).
    ``tools`` lists the tools to offer (default: all the server lists), ``exclude_tools``
    those never to offer; ``prefix`` is put before each name the model sees. ``side_effects``
    raises a tool's side-effect class above what its annotations say.
    """

    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    tools: tuple[str, ...] | None = None
    exclude_tools: tuple[str, ...] = ()
    prefix: str = ""
    timeout: float | None = None
    max_output: int | None = None
    side_effects: dict[str, SideEffect] = msgspec.field(default_factory=dict)

    def offers(self, tool: str) -> bool:
        """Whether the server's tool ``tool`` (its own name) is offered to agents."""
        allowed = self.tools is None or tool in self.tools
        return allowed and tool not in self.exclude_tools


class Approvals(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who may run ``destructive`` and ``external`` tools without a person saying yes."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    otherwise: Literal["ask", "deny"] = "ask"


class Agent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One agent: one actor with one connection."""

    name: str
    role: Role = "worker"
    model: str | None = None
    description: str = ""
    instructions: str = ""
    tools: tuple[str, ...] = ()
    limits: Budget | None = None
    context: Context | None = None  # overrides settings.context for this agent
    settings: ModelOptions | None = None  # override the plan's [settings], field by field
    # What the agent answers: a JSON Schema, or a type's import path ("module:Type").
    output_type: str | dict[str, Any] | None = None
    # Names of [mcp_servers] whose tools it may call.
    mcp_servers: tuple[str, ...] = ()
    # The service's own tools, each a table with its ``type``, sent verbatim.
    hosted_tools: tuple[dict[str, Any], ...] = ()


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node of the step graph, run by ``agent`` once every ``depends_on`` step is done."""

    id: str
    agent: str
    task: str
    depends_on: tuple[str, ...] = ()


class Plan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole plan. Build it with ``plans.load_plan``, ``plan_from_dict`` or ``PlanBuilder``.

    A Plan built by hand is not checked; pass it through ``plans.check_plan`` first.
    """

    name: str
    version: int = FORMAT_VERSION
    goal: str | None = None
    final_step: str | None = None
    settings: Settings = msgspec.field(default_factory=Settings)
    budgets: Budget = msgspec.field(default_factory=Budget)
    approvals: Approvals = msgspec.field(default_factory=Approvals)
    tools: dict[str, ToolConfig] = msgspec.field(default_factory=dict)
    mcp_servers: dict[str, McpServer] = msgspec.field(default_factory=dict)
    agents: tuple[Agent, ...] = ()
    steps: tuple[Step, ...] = ()

    @property
    def planner(self) -> Agent | None:
        """The planner agent, if the plan has one."""
        return next((a for a in self.agents if a.role == "planner"), None)

    @property
    def workers(self) -> tuple[Agent, ...]:
        """Every agent with role ``worker``, in plan order."""
        return tuple(a for a in self.agents if a.role == "worker")

    def agent(self, name: str) -> Agent:
        """The agent called ``name``.

        Raises:
            KeyError: no such agent (a validated plan never references one).
        """
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(name)

    def step(self, step_id: str) -> Step:
        """The step with id ``step_id``.

        Raises:
            KeyError: no such step.
        """
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def model_for(self, agent: Agent) -> str:
        """The model ``agent`` uses: its own, else ``settings.model``.

        Raises:
            PlanError: neither is set (validation reports this as ``plan.schema``).
        """
        model = agent.model or self.settings.model
        if not model:
            raise PlanError(f"agent {agent.name!r} has no model and settings.model is not set")
        return model

    def context_for(self, agent: Agent) -> Context:
        """``step`` or ``agent``: the agent's own ``context``, else ``settings.context``."""
        return agent.context or self.settings.context

    def settings_for(self, agent: Agent) -> ModelOptions:
        """``agent``'s model settings: its own ``settings`` over the plan's ``[settings]``."""
        plan_wide = self.settings.model_options
        return agent.settings.over(plan_wide) if agent.settings is not None else plan_wide

    def tools_for(self, agent: Agent) -> dict[str, ToolConfig]:
        """The tools ``agent`` may call, as model-facing name -> options, in listed order.

        A name defined under ``[tools]`` maps to that entry; an import path maps to default
        options under the function's name (``pkg.mod:search`` -> ``search``).

        Raises:
            KeyError: the agent lists an undefined name (a validated plan never does).
        """
        tools: dict[str, ToolConfig] = {}
        for entry in agent.tools:
            if ":" in entry:
                tools[tool_name_of_path(entry)] = ToolConfig(path=entry)
            else:
                tools[entry] = self.tools[entry]
        return tools


def tool_name_of_path(path: str) -> str:
    """The model-facing name of a tool listed by import path: its last attribute name."""
    return path.rpartition(":")[2].rpartition(".")[2]


# -- step references ---------------------------------------------------------------------------

_PLACEHOLDER: Final = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_STEP_RESULT: Final = re.compile(r"steps\.([A-Za-z][A-Za-z0-9_-]{0,63})\.result")


class Reference(msgspec.Struct, frozen=True):
    """One ``{{...}}`` placeholder in a task: ``kind`` is goal, step or invalid."""

    text: str
    kind: Literal["goal", "step", "invalid"]
    step: str | None = None


def task_references(task: str) -> list[Reference]:
    """Every ``{{...}}`` placeholder of ``task``, classified, in order of appearance."""
    references = []
    for match in _PLACEHOLDER.finditer(task):
        inner = match.group(1).strip()
        if inner == "goal":
            references.append(Reference(match.group(0), "goal"))
        elif step := _STEP_RESULT.fullmatch(inner):
            references.append(Reference(match.group(0), "step", step.group(1)))
        else:
            references.append(Reference(match.group(0), "invalid"))
    return references


def render_task(step: Step, results: Mapping[str, str], *, goal: str | None = None) -> str:
    """The task of ``step`` with its placeholders replaced. Pure; one pass.

    Results are inserted verbatim and never expanded again, so a result that contains
    ``{{...}}`` stays as it is.

    Args:
        step: a step of a validated plan.
        results: step id -> result text; must hold every step the task references.
        goal: the run's goal, required when the task references ``{{goal}}``.

    Returns:
        The task text to send to the step's agent.

    Raises:
        PlanError: a referenced result or the goal is missing, or a placeholder is invalid.
            With a validated plan and a correct scheduler this is a bug in the caller.
    """

    def substitute(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        if inner == "goal":
            if goal is None:
                raise PlanError(f"step {step.id!r} references {{{{goal}}}} but no goal was given")
            return goal
        if reference := _STEP_RESULT.fullmatch(inner):
            try:
                return results[reference.group(1)]
            except KeyError:
                raise PlanError(
                    f"step {step.id!r} references the result of {reference.group(1)!r}, "
                    "which is not available yet"
                ) from None
        raise PlanError(f"step {step.id!r}: invalid reference {match.group(0)!r}")

    return _PLACEHOLDER.sub(substitute, step.task)


# -- scheduling --------------------------------------------------------------------------------


def scheduled_steps(plan: Plan) -> tuple[Step, ...]:
    """The steps a run executes, dependencies first, ties in plan order.

    With ``final_step`` set, only that step and its transitive dependencies; otherwise all.
    The plan must be valid (no cycles, no unknown steps).
    """
    by_id = {step.id: step for step in plan.steps}
    wanted = set(by_id) if plan.final_step is None else _ancestors(plan, plan.final_step)
    done: set[str] = set()
    order: list[Step] = []
    pending = [step for step in plan.steps if step.id in wanted]
    while pending:
        ready = [s for s in pending if all(d in done for d in s.depends_on)]
        if not ready:
            raise PlanError(f"plan {plan.name!r} has a dependency cycle; validate it first")
        for step in ready:
            done.add(step.id)
        order.extend(ready)
        pending = [s for s in pending if s.id not in done]
    return tuple(order)


def result_steps(plan: Plan) -> tuple[Step, ...]:
    """The steps whose results form the run's answer.

    ``final_step`` when set; otherwise every scheduled step no other step depends on.
    """
    if plan.final_step is not None:
        return (plan.step(plan.final_step),)
    needed = {dependency for step in plan.steps for dependency in step.depends_on}
    return tuple(step for step in plan.steps if step.id not in needed)


def _ancestors(plan: Plan, step_id: str) -> set[str]:
    """``step_id`` and every step it transitively depends on (that exists)."""
    by_id = {step.id: step for step in plan.steps}
    seen: set[str] = set()
    stack = [step_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in by_id:
            continue
        seen.add(current)
        stack.extend(by_id[current].depends_on)
    return seen
