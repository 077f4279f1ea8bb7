"""The customer's account on the site: log in (any case), password change and reset (Django's own views, in the
site's templates), and API tokens — made (shown once), listed and revoked. Token changes are audited."""
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_POST
from rest_framework.throttling import SimpleRateThrottle

from cells.audit import REFUSED, SUCCEEDED, audit_record, request_fields
from portal.models import ApiToken
from portal.site.forms import ApiTokenForm, LoginForm, PasswordChangeForm, PasswordResetForm, SetPasswordForm
from portal.tokens import api_token_issue, api_token_revoke


class SignupThrottle(SimpleRateThrottle):
    """The site's signup form shares the API's ``signup`` rate: per account when signed in, else per address."""

    scope = "signup"

    def get_cache_key(self, request, view):
        user = getattr(request, "user", None)
        ident = f"user-{user.pk}" if user is not None and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": "site-signup", "ident": ident}


def signup_allowed(request) -> bool:
    """Counts one signup attempt; False once the rate is used up."""
    return SignupThrottle().allow_request(request, None)


login_view = auth_views.LoginView.as_view(template_name="site/login.html", authentication_form=LoginForm)
password_change = auth_views.PasswordChangeView.as_view(
    template_name="site/password_change_form.html", form_class=PasswordChangeForm,
    success_url=reverse_lazy("site:password-change-done"),
)
password_change_done = auth_views.PasswordChangeDoneView.as_view(template_name="site/password_change_done.html")
password_reset = auth_views.PasswordResetView.as_view(
    template_name="site/password_reset_form.html", form_class=PasswordResetForm,
    email_template_name="site/password_reset_email.txt", subject_template_name="site/password_reset_subject.txt",
    success_url=reverse_lazy("site:password-reset-done"),
)
password_reset_done = auth_views.PasswordResetDoneView.as_view(template_name="site/password_reset_done.html")
password_reset_confirm = auth_views.PasswordResetConfirmView.as_view(
    template_name="site/password_reset_confirm.html", form_class=SetPasswordForm,
    success_url=reverse_lazy("site:password-reset-complete"),
)
password_reset_complete = auth_views.PasswordResetCompleteView.as_view(
    template_name="site/password_reset_complete.html"
)


def _audit(request, action, target, outcome=SUCCEEDED, reason=""):
    audit_record(action=action, outcome=outcome, target=target, reason=reason, request=request,
                 details={"via": "site", **request_fields(request.POST)})


def _account_page(request, *, form=None, created=None, status=200):
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at", "-id")
    response = render(request, "site/account.html", {
        "form": form or ApiTokenForm(), "tokens": tokens, "created": created,
    }, status=status)
    if created:
        response["Cache-Control"] = "no-store"  # the token is shown once: no copy in a cache
    return response


@login_required
def account(request):
    """The account page: password links and the API tokens; POST makes a token and shows it this once."""
    if request.method != "POST":
        return _account_page(request)
    form = ApiTokenForm(request.POST)
    if not form.is_valid():
        _audit(request, "token.create", None, REFUSED,
               reason=" ".join(m for ms in form.errors.values() for m in ms))
        return _account_page(request, form=form, status=400)
    token, plaintext = api_token_issue(user=request.user, **form.cleaned_data)
    _audit(request, "token.create", token)
    return _account_page(request, created={"token": token, "plaintext": plaintext}, status=201)


@login_required
@require_POST
def token_revoke(request, token_id):
    """Revoke one of the customer's own tokens (others' answer 404)."""
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    if api_token_revoke(token=token):
        _audit(request, "token.revoke", token)
        messages.success(request, f"Token “{token.name}” revoked; it no longer works.")
    else:
        _audit(request, "token.revoke", token, REFUSED, reason="already revoked")
        messages.info(request, f"Token “{token.name}” was already revoked.")
    return redirect("site:account")
