from django.db import models


class Project(models.Model):
    name = models.TextField()


class Task(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    title = models.TextField()
    priority = models.IntegerField(null=True)  # added by 0002

    class Meta:
        indexes = [models.Index(fields=["priority"], name="work_task_priority_idx")]  # added by 0002


class Comment(models.Model):  # added by 0002
    task = models.ForeignKey(Task, on_delete=models.CASCADE)
    body = models.TextField()
