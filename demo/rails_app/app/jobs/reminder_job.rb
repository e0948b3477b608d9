# frozen_string_literal: true

# Enqueued with set(wait:): held in Sidekiq's schedule, then pushed by the worker's poller.
class ReminderJob < ApplicationJob
  def perform(user_id, due_at)
    record("user" => user_id, "late_by_s" => (Time.now.to_f - due_at).round(1))
  end
end
