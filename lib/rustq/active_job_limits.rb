# frozen_string_literal: true

module Rustq
  # The same limits for ActiveJob classes, under the names ActiveJob users know:
  #
  #   class SyncContactJob < ApplicationJob
  #     # Solid Queue's: at most 2 at once per account (`group` shares the limit across classes).
  #     limits_concurrency to: 2, key: ->(contact) { contact.account }, duration: 5.minutes
  #     # activejob-uniqueness': :until_executing, :until_executed, :until_expired, :while_executing.
  #     unique :until_executed, lock_ttl: 1.hour, on_conflict: :log
  #   end
  #
  # They become the payload fields of rustq_core's `limits` module when the adapter pushes.
  # `duration` is accepted and not needed: a slot belongs to the process running the job and is
  # freed when it ends or the process dies, never by time. `:while_executing` runs one job per
  # set of arguments at a time; the others wait their turn (none is dropped).
  module ActiveJobLimits
    STRATEGIES = %i[until_executing until_executed until_expired while_executing].freeze
    CONFLICTS = %i[raise log].freeze

    def limits_concurrency(to: 1, key: ->(*) { nil }, duration: nil, group: nil) # rubocop:disable Lint/UnusedMethodArgument
      @rustq_concurrency = {to: to, key: key, group: group}
    end

    def unique(strategy, lock_ttl: 86_400, on_conflict: :raise)
      raise ArgumentError, "unique strategy must be one of #{STRATEGIES.join(", ")}, got #{strategy.inspect}" unless STRATEGIES.include?(strategy)
      raise ArgumentError, "unique on_conflict must be :raise, :log or a Proc, got #{on_conflict.inspect}" unless CONFLICTS.include?(on_conflict) || on_conflict.respond_to?(:call)

      @rustq_unique = {strategy: strategy, lock_ttl: lock_ttl, on_conflict: on_conflict}
    end

    def rustq_concurrency = inherited_limit(:@rustq_concurrency, :rustq_concurrency)

    def rustq_unique = inherited_limit(:@rustq_unique, :rustq_unique)

    # The payload fields for `job` (an ActiveJob instance).
    def self.fields(job)
      klass = job.class
      fields = {}
      if (spec = klass.rustq_concurrency)
        param = spec[:key].call(*job.arguments)
        group = spec[:group] || klass.name
        fields["concurrency"] = {"key" => [group, concurrency_param(param)].compact.join("/"), "limit" => spec[:to]}
      end
      if (spec = klass.rustq_unique)
        arguments = ::ActiveJob::Arguments.serialize(job.arguments)
        if spec[:strategy] == :while_executing
          digest = Digest::SHA1.hexdigest(JSON.generate([klass.name, job.queue_name, arguments]))
          fields["concurrency"] = {"key" => "unique:#{digest}", "limit" => 1}
        else
          fields["unique_for"] = spec[:lock_ttl].to_f
          fields["unique_until"] = {until_executing: "start", until_executed: "success", until_expired: "expired"}.fetch(spec[:strategy])
          fields["unique_args"] = arguments
        end
      end
      fields
    end

    # The job was not enqueued: a job with the same arguments holds the lock.
    def self.conflict(job)
      case (on_conflict = job.class.rustq_unique&.fetch(:on_conflict))
      when :raise then raise NotUnique, "#{job.class.name} not enqueued: a job with the same arguments holds its unique lock"
      when :log then Rustq.logger.info { "#{job.class.name} not enqueued: a job with the same arguments holds its unique lock" }
      else on_conflict&.call(job)
      end
    end

    # Solid Queue's rule: a record counts by class and id, anything else as text.
    def self.concurrency_param(param)
      return nil if param.nil?
      return "#{param.class.name}/#{param.id}" if defined?(::ActiveRecord::Base) && param.is_a?(::ActiveRecord::Base)
      return param.to_global_id.to_s if param.respond_to?(:to_global_id)

      param.to_s
    end

    private

    def inherited_limit(ivar, reader)
      return instance_variable_get(ivar) if instance_variable_defined?(ivar)

      superclass.public_send(reader) if superclass.respond_to?(reader)
    end
  end
end
