"""The error for a problem the user can fix: a reward name that is not installed, an argument it does not take,
a test format it cannot read. The message says what is wrong, the rule, and the fix.

It lives here, at the bottom of the import graph, so that rewards (usable on their own, without the trainer)
import nothing from grpo; grpo.errors re-exports it as the error every grpo command turns into a clear message.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input (recipe, file, name): the message says what, the rule, and the fix."""
