from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("datasets", "0002_dataset_attempts_dataset_claimed_by_and_more"),
    ]

    operations = [
        migrations.AddField(
            model_name="dataset",
            name="info",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AlterField(
            model_name="dataset",
            name="kind",
            field=models.CharField(choices=[("image", "Images"), ("audio", "Speech")], default="image", max_length=16),
        ),
    ]
