"""Customer forms: every refusal is a message on the field at fault, and every input names (aria-describedby) the
help text and the errors the templates render next to it (``site/_field.html``)."""
from django import forms
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.forms.boundfield import BoundField
from django.utils import timezone

from cells.choices import WEEKDAYS
from cells.models import Instance, Region
from cells.placement import region_takes_signups
from cells.validators import validate_instance_name
from portal.accounts import normalise_login
from provisioning.backups.selectors import usable_backups
from provisioning.models import BackupKind


class DescribedBoundField(BoundField):
    """An input that points at its help text (``<id>_helptext``) and its errors (``error-<name>``): the ids
    ``site/_field.html`` gives them."""

    def build_widget_attrs(self, attrs, widget=None):
        attrs = super().build_widget_attrs(attrs, widget)
        widget = widget or self.field.widget
        ids = [f"{self.auto_id}_helptext"] if self.help_text else []
        if self.errors:
            ids.append(f"error-{self.name}")
        if ids and self.auto_id and not widget.is_hidden:
            attrs["aria-describedby"] = " ".join(ids)
        return attrs


class Described:
    """Form mixin: every field rendered with ``DescribedBoundField``."""

    bound_field_class = DescribedBoundField


class RegionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, region):
        suffix = "" if region_takes_signups(region) else " (not taking new instances)"
        return f"{region.name}{suffix}"


class InstanceForm(Described, forms.Form):
    """A new instance for a signed-in customer."""

    name = forms.CharField(
        max_length=40,
        validators=[validate_instance_name],
        help_text="3–40 lowercase letters, digits or hyphens; it becomes your instance's address.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    region = RegionChoiceField(queryset=Region.objects.order_by("name"), empty_label=None)

    def clean_name(self):
        name = self.cleaned_data["name"]
        if Instance.objects.filter(name=name).exists():
            raise forms.ValidationError(f"The name “{name}” is taken; choose another.", code="taken")
        return name

    def clean_region(self):
        region = self.cleaned_data["region"]
        if not region_takes_signups(region):
            raise forms.ValidationError(
                f"{region.name} is not taking new instances right now; choose another region.", code="closed"
            )
        return region


class SignupForm(InstanceForm):
    """A new customer account and its first instance."""

    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    field_order = ["email", "password", "name", "region"]

    def clean_email(self):
        return normalise_login(self.cleaned_data["email"])

    def clean(self):
        data = super().clean()
        password, email = data.get("password"), data.get("email")
        if password:
            # The would-be account, so the similarity check compares the password with its e-mail.
            candidate = get_user_model()(username=email or "", email=email or "")
            try:
                validate_password(password, user=candidate)
            except forms.ValidationError as error:
                self.add_error("password", error)
        return data


class LoginForm(Described, auth_forms.AuthenticationForm):
    """Log in with the e-mail (or staff username) in any case; the name is normalised before it is checked."""

    def clean_username(self):
        return normalise_login(self.cleaned_data.get("username"))


class PasswordResetForm(Described, auth_forms.PasswordResetForm):
    pass


class SetPasswordForm(Described, auth_forms.SetPasswordForm):
    pass


class PasswordChangeForm(Described, auth_forms.PasswordChangeForm):
    pass


class ApiTokenForm(Described, forms.Form):
    """A new API token: what it is for and, if it should, when it stops working."""

    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. “CI pipeline”.")
    expires_at = forms.DateTimeField(
        label="Expires (UTC, optional)", required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Leave empty for a token that works until you revoke it.",
    )

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("Choose a time in the future.", code="past")
        return expires_at


class RestoreForm(Described, forms.Form):
    """A point in time to restore the database to; the service checks it lies in the restorable window."""

    point_in_time = forms.DateTimeField(
        label="Restore to (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"),
        error_messages={"required": "Choose the date and time to restore to.", "invalid": "Enter a date and time."},
    )

    def __init__(self, *args, window=None, **kwargs):
        super().__init__(*args, **kwargs)
        if window:
            attrs = self.fields["point_in_time"].widget.attrs
            attrs["min"], attrs["max"] = (moment.strftime("%Y-%m-%dT%H:%M:%S") for moment in (window.start, window.end))


class RestoreFilesForm(forms.Form):
    """One of the instance's own usable files backups."""

    backup = forms.ModelChoiceField(
        queryset=None, error_messages={"invalid_choice": "That backup is not one of this instance's files backups."}
    )

    def __init__(self, *args, instance, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["backup"].queryset = usable_backups(instance, BackupKind.FILES)


class DecommissionForm(Described, forms.Form):
    """Deletion protection: the customer types the instance's name."""

    confirm_name = forms.CharField(
        label="Type the instance's name to confirm", max_length=100,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        error_messages={"required": "Type the instance's name to confirm."},
    )


class MaintenanceWindowForm(forms.Form):
    """The customer's weekly two-hour maintenance window (UTC), or the region's default."""

    use_region_default = forms.BooleanField(required=False, label="Use my region's default window")
    weekday = forms.TypedChoiceField(choices=WEEKDAYS, coerce=int, required=False, empty_value=None)
    hour = forms.TypedChoiceField(
        choices=[("", "—"), *[(h, f"{h:02d}:00 UTC") for h in range(24)]], coerce=int, required=False,
        empty_value=None,
    )

    def clean(self):
        data = super().clean()
        if not data.get("use_region_default") and (data.get("weekday") is None or data.get("hour") is None):
            raise forms.ValidationError("Choose a day and an hour, or use your region's default window.")
        return data
