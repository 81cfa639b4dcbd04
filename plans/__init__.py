"""Plans: the plan model, loaders for TOML/YAML/JSON, validation and the Python builder.

See ``plans.model`` for the file format and ``plans.validate`` for the issue codes.
"""

from loguru import logger

from .builder import PlanBuilder as PlanBuilder, import_path_of as import_path_of
from .load import (
    MAX_PLAN_BYTES as MAX_PLAN_BYTES,
    check_plan_file as check_plan_file,
    load_plan as load_plan,
)
from .model import (
    LIMITS as LIMITS,
    NEUTRAL_SETTINGS as NEUTRAL_SETTINGS,
    Agent as Agent,
    Approvals as Approvals,
    Budget as Budget,
    McpServer as McpServer,
    ModelOptions as ModelOptions,
    Plan as Plan,
    Reasoning as Reasoning,
    Role as Role,
    Settings as Settings,
    SideEffect as SideEffect,
    Step as Step,
    ToolConfig as ToolConfig,
    expand_environment as expand_environment,
    render_task as render_task,
    result_steps as result_steps,
    scheduled_steps as scheduled_steps,
    task_references as task_references,
)
from .output import (
    OutputError as OutputError,
    OutputMismatch as OutputMismatch,
    OutputType as OutputType,
    output_type_of as output_type_of,
)
from .validate import (
    PlanIssue as PlanIssue,
    PlanReport as PlanReport,
    check_approval_patterns as check_approval_patterns,
    check_plan as check_plan,
    plan_from_dict as plan_from_dict,
)

logger.disable(__name__)

__all__ = [
    "LIMITS",
    "MAX_PLAN_BYTES",
    "NEUTRAL_SETTINGS",
    "Agent",
    "Approvals",
    "Budget",
    "McpServer",
    "ModelOptions",
    "OutputError",
    "OutputMismatch",
    "OutputType",
    "Plan",
    "PlanBuilder",
    "PlanIssue",
    "PlanReport",
    "Reasoning",
    "Role",
    "Settings",
    "SideEffect",
    "Step",
    "ToolConfig",
    "check_approval_patterns",
    "check_plan",
    "check_plan_file",
    "expand_environment",
    "import_path_of",
    "load_plan",
    "output_type_of",
    "plan_from_dict",
    "render_task",
    "result_steps",
    "scheduled_steps",
    "task_references",
]
